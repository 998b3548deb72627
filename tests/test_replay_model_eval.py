"""The Replay model and evaluation metrics, on a tiny log whose numbers are worked out by hand.

Models a (cost 1, 100 ms), b (cost 10, 200 ms), c (cost 100, 300 ms); rules accept a
log-prob >= -0.1.

    query  a            b            c       cascade a -> b -> c
    q1     right -0.01  right        right   a accepts: cost 1, right
    q2     wrong -0.5   right -0.01  right   b accepts: cost 11, right
    q3     wrong -0.9   wrong -0.9   right   c answers: cost 111, right
    q4     wrong -0.05  wrong -0.9   wrong   a accepts (confidently wrong): cost 1

Single models: a 1/4, b 2/4, c 3/4 -> top model c (quality 0.75, cost 100).
Cascade: quality 3/4, cost (1 + 11 + 111 + 1) / 4 = 31, relative cost 0.31.
Oracle: q1 a (1), q2 b (10), q3 c (100), q4 nobody right -> cheapest, a (1):
cost 112 / 4 = 28, quality 3/4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiered.core.cascade import Cascade, Stage
from tiered.core.items import Item
from tiered.core.rules import Threshold, Vote
from tiered.core.spec import BuildContext, CascadeSpec, build_model
from tiered.errors import ConfigError, DataError, SignalMissingError
from tiered.eval import evaluate, evaluate_cascade, oracle_bound, plot_cost_quality, top_model
from tiered.eval.metrics import single_models
from tiered.replay.load import load_replay
from tiered.replay.log import ReplayLog
from tiered.replay.model import Replay, replay_items, unrecorded_answer

COST = {"a": 1.0, "b": 10.0, "c": 100.0}
LATENCY = {"a": 100.0, "b": 200.0, "c": 300.0}
TABLE = {  # query -> model -> (correct, logprob)
    "q1": {"a": (True, -0.01), "b": (True, -0.02), "c": (True, -0.01)},
    "q2": {"a": (False, -0.5), "b": (True, -0.01), "c": (True, -0.01)},
    "q3": {"a": (False, -0.9), "b": (False, -0.9), "c": (True, -0.01)},
    "q4": {"a": (False, -0.05), "b": (False, -0.9), "c": (False, -0.2)},
}


def records(table: dict[str, dict[str, tuple[bool, float]]]) -> list[dict[str, Any]]:
    rows = []
    for qid, outs in table.items():
        rows.append(
            {
                "id": qid,
                "task": "hand",
                "input": f"question {qid}",
                "reference": "R",
                "outputs": {
                    m: {
                        "answer": "R" if ok else f"wrong-{m}",
                        "correct": ok,
                        "cost": COST[m],
                        "latency_ms": LATENCY[m],
                        "logprob": lp,
                    }
                    for m, (ok, lp) in outs.items()
                },
            }
        )
    return rows


def write_log(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def log(tmp_path: Path) -> ReplayLog:
    return load_replay(write_log(tmp_path / "hand.jsonl", records(TABLE)))


def chain(log: ReplayLog, names: list[str], threshold: float = -0.1) -> Cascade:
    rule = Threshold(signal="logprob", threshold=threshold)
    stages = [Stage(n, Replay(log, n), rule=rule) for n in names[:-1]]
    return Cascade([*stages, Stage(names[-1], Replay(log, names[-1]))])


def test_replay_answers_by_id_in_any_order(log: ReplayLog) -> None:
    model = Replay(log, "a")
    items = [Item(id="q3", input=""), Item(id="q1", input=""), Item(id="q3", input="")]
    ans = model.predict(items)
    assert ans.labels == ["wrong-a", "R", "wrong-a"]
    np.testing.assert_allclose(ans.cost, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(ans.latency_ms, [100.0, 100.0, 100.0])
    np.testing.assert_allclose(ans.quality, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(ans.signals["logprob"], [-0.9, -0.01, -0.9])
    assert model.name == "a" and model.tags.generates_text


def test_replay_unknown_id_is_a_data_error_naming_it(log: ReplayLog) -> None:
    with pytest.raises(DataError, match="id 'q99' is not in the replay log"):
        Replay(log, "b").predict([Item(id="q1", input=""), Item(id="q99", input="")])


def test_replay_unknown_model_names_the_models(log: ReplayLog) -> None:
    with pytest.raises(ConfigError, match=r"model 'zz' is not in the replay log.*a, b, c"):
        Replay(log, "zz")


def test_replay_gaps_null_answers_tokens_and_samples(tmp_path: Path) -> None:
    rows = [
        {"id": "1", "outputs": {"m": {"answer": None, "correct": True, "cost": 1.0,
                                      "tokens_in": 5, "samples": ["x", "x", "y"]},
                                "n": {"answer": "x", "correct": True, "cost": 2.0}}},
        {"id": "2", "outputs": {"n": {"answer": "y", "correct": False, "cost": 4.0}}},
    ]  # fmt: skip
    log = load_replay(write_log(tmp_path / "l.jsonl", rows))
    ans = Replay(log, "m").predict(replay_items(log))
    # recorded but without text: a placeholder that rules may accept; missing: None
    assert ans.labels == [unrecorded_answer("m"), None]
    np.testing.assert_allclose(ans.cost, [1.0, 1.0])  # missing -> the model's mean cost
    np.testing.assert_allclose(ans.quality, [1.0, 0.0])
    assert ans.tokens_in is not None and ans.tokens_in[0] == 5
    assert ans.samples == [["x", "x", "y"], []]
    np.testing.assert_allclose(ans.signals["vote"], [2 / 3, np.nan])
    # model n carries no signal at all: a rule asking for one gets a clear error
    n_answers = Replay(log, "n").predict(replay_items(log))
    assert n_answers.signals == {} and n_answers.samples is None
    with pytest.raises(SignalMissingError, match="vote"):
        Vote(min_share=0.5).accept(n_answers, None)  # type: ignore[arg-type]
    with pytest.raises(SignalMissingError, match="logprob"):
        Threshold(signal="logprob", threshold=0.0).accept(n_answers, None)  # type: ignore[arg-type]


def test_replay_items(log: ReplayLog) -> None:
    items = replay_items(log)
    assert [it.id for it in items] == ["q1", "q2", "q3", "q4"]
    assert items[0].input == "question q1"
    assert items[0].fields == {"task": "hand", "reference": "R"}


def test_replay_from_a_spec_with_log_in_context_or_file(log: ReplayLog, tmp_path: Path) -> None:
    from_ctx = build_model(
        {"kind": "replay", "model": "b"}, BuildContext(resources={"replay_log": log})
    )
    assert isinstance(from_ctx, Replay) and from_ctx.log is log
    ctx = BuildContext(base_dir=tmp_path)
    from_file = build_model({"kind": "replay", "model": "c", "log": "hand.jsonl"}, ctx)
    again = build_model({"kind": "replay", "model": "a", "log": "hand.jsonl"}, ctx)
    assert isinstance(from_file, Replay) and isinstance(again, Replay)
    assert from_file.log is again.log  # one file, read once
    assert from_file.predict(replay_items(log)).labels == ["R", "R", "R", "wrong-c"]
    with pytest.raises(ConfigError, match="needs a log"):
        build_model({"kind": "replay", "model": "a"}, BuildContext())
    with pytest.raises(ConfigError, match="unknown key"):
        build_model({"kind": "replay", "model": "a", "lgo": "x"}, ctx)


def test_cascade_spec_with_an_unknown_replay_model_names_the_stage(log: ReplayLog) -> None:
    spec = CascadeSpec.model_validate(
        {"stages": [{"name": "s", "model": {"kind": "replay", "model": "nope"}}]}
    )
    with pytest.raises(ConfigError) as info:
        spec.build(BuildContext(resources={"replay_log": log}))
    assert info.value.field == "stages.0.model.model"


def test_cumulative_cost_through_the_engine(log: ReplayLog) -> None:
    result = chain(log, ["a", "b", "c"]).run(replay_items(log))
    np.testing.assert_allclose(result.cost, [1.0, 11.0, 111.0, 1.0])
    np.testing.assert_allclose(result.latency_ms, [100.0, 300.0, 600.0, 100.0])
    np.testing.assert_allclose(result.quality, [1.0, 1.0, 1.0, 0.0])
    assert result.labels == ["R", "R", "R", "wrong-a"]
    assert result.answered_by.tolist() == [0, 1, 2, 0]


def test_eval_metrics_on_the_hand_made_log(log: ReplayLog) -> None:
    _, report = evaluate_cascade(chain(log, ["a", "b", "c"]), log)
    assert report.n_items == 4
    assert report.quality == pytest.approx(0.75)
    assert report.cost_per_item == pytest.approx(31.0)
    assert report.latency_ms == pytest.approx(275.0)
    assert (report.top_model, report.top_quality, report.top_cost_per_item) == ("c", 0.75, 100.0)
    assert report.relative_cost == pytest.approx(0.31)
    assert report.oracle_cost_per_item == pytest.approx(28.0)
    assert report.oracle_quality == pytest.approx(0.75)
    assert report.oracle_relative_cost == pytest.approx(0.28)
    assert report.stage_share == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    assert report.missing_outputs == 0
    assert [p.name for p in report.models] == ["a", "b", "c"]
    assert [p.quality for p in report.models] == [0.25, 0.5, 0.75]
    assert not report.synthetic
    np.testing.assert_array_equal(oracle_bound(log).choice, [0, 1, 2, 0])


def test_top_model_ties_go_to_the_cheaper(tmp_path: Path) -> None:
    table = {q: {m: outs[m] for m in ("a", "b", "c")} for q, outs in TABLE.items()}
    table["q3"]["b"] = (True, -0.9)  # b now reaches 3/4 like c, at a tenth of the cost
    log = load_replay(write_log(tmp_path / "tie.jsonl", records(table)))
    top = top_model(single_models(log))
    assert (top.name, top.quality, top.cost_per_item) == ("b", 0.75, 10.0)


def test_missing_outputs_are_wrong_charged_and_counted(tmp_path: Path) -> None:
    table = dict(TABLE)
    table["q5"] = {"a": (False, -0.5), "c": (True, -0.01)}  # b did not record q5
    log = load_replay(write_log(tmp_path / "gap.jsonl", records(table)))
    result, report = evaluate_cascade(chain(log, ["a", "b", "c"]), log)
    # q5: a defers, b has no answer (passed on, charged its mean cost 10), c answers right
    assert result.cost[4] == pytest.approx(1 + 10 + 100)
    assert result.answered_by[4] == 2
    assert report.missing_outputs == 1
    assert report.missing_by_stage == {"a": 0, "b": 1, "c": 0}
    assert report.quality == pytest.approx(4 / 5)
    b = next(p for p in report.models if p.name == "b")
    assert (b.missing, b.quality) == (1, pytest.approx(2 / 5))

    # when the gap is at the last stage it must answer anyway, and is counted wrong
    result, report = evaluate_cascade(chain(log, ["a", "b"]), log)
    assert result.labels[4] is None and result.quality[4] == 0.0
    assert result.cost[4] == pytest.approx(11.0)
    assert report.missing_outputs == 1


def test_eval_on_a_subset_of_queries(log: ReplayLog) -> None:
    cascade = chain(log, ["a", "b", "c"])
    items = [it for it in replay_items(log) if it.id in ("q2", "q3")]
    report = evaluate(cascade.run(items), log, cascade=cascade)
    assert report.n_items == 2
    assert report.cost_per_item == pytest.approx(61.0)
    assert report.top_model == "c" and report.top_quality == 1.0
    assert report.oracle_cost_per_item == pytest.approx(55.0)


REQUIRED_KEYS = {
    "quality",
    "cost_per_item",
    "top_model",
    "top_quality",
    "top_cost_per_item",
    "relative_cost",
    "oracle_cost_per_item",
    "oracle_quality",
    "stage_share",
    "n_items",
    "missing_outputs",
}


def test_json_summary(log: ReplayLog, tmp_path: Path) -> None:
    _, report = evaluate_cascade(chain(log, ["a", "c"]), log)
    out = tmp_path / "out.json"
    report.save_json(out)
    data = json.loads(out.read_text())
    assert set(data) >= REQUIRED_KEYS
    assert data["top_model"] == "c" and data["n_items"] == 4
    assert data["stage_share"] == {"a": 0.5, "c": 0.5}
    assert data["cost_per_item"] == pytest.approx((1 + 101 + 101 + 1) / 4)
    report.quality = math.nan
    assert report.to_dict()["quality"] is None  # JSON has no NaN


@pytest.mark.parametrize("spread", [1.0, 100.0])
def test_plot_is_written(log: ReplayLog, tmp_path: Path, spread: float) -> None:
    _, report = evaluate_cascade(chain(log, ["a", "b", "c"]), log)
    if spread == 1.0:  # all costs within a decade: linear axis
        for p in report.models:
            p.cost_per_item = 1.0 + p.quality
        report.oracle_cost_per_item, report.cost_per_item = 1.5, 1.6
    frontier = [(1.0, 0.25), (1.9 if spread == 1.0 else 31.0, 0.75)]
    path = plot_cost_quality(report, tmp_path / "p.png", frontier=frontier)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_a_rule_needing_a_signal_the_log_lacks_fails_early_and_clearly(tmp_path: Path) -> None:
    outputs = {
        "m": {"correct": True, "cost": 1.0},
        "n": {"correct": True, "cost": 2.0, "logprob": -1.0},
    }
    rows = [{"id": "1", "outputs": outputs}]
    log = load_replay(write_log(tmp_path / "nosig.jsonl", rows))
    cascade = chain(log, ["m", "n"])
    with pytest.raises(SignalMissingError) as info:
        evaluate_cascade(cascade, log)
    message = str(info.value)
    assert "stage 'm'" in message and "signal 'logprob'" in message
    assert "nosig.jsonl" in message and "carries: none" in message
    # the last stage's rule never runs, so a cascade ending in n is fine
    _, report = evaluate_cascade(chain(log, ["n", "m"]), log)
    assert report.n_items == 1
