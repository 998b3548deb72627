"""The replay-log loader: validation errors name file, line and field; skip-bad; gaps; order."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiered.errors import DataError
from tiered.replay.load import load_replay


def out(correct: bool = True, cost: float = 0.01, **extra: Any) -> dict[str, Any]:
    return {"answer": "A" if correct else "B", "correct": correct, "cost": cost, **extra}


def rec(i: int, **outputs: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"q{i}", "task": "t", "input": f"question {i}", "outputs": outputs}


def write(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def good_lines() -> list[dict[str, Any]]:
    # "big" comes first in the file but is the more expensive model
    return [
        rec(i, big=out(True, 0.5, logprob=-0.1), small=out(i % 2 == 0, 0.01, logprob=-0.4))
        for i in range(4)
    ]


def test_models_are_ordered_cheapest_first(tmp_path: Path) -> None:
    log = load_replay(write(tmp_path / "log.jsonl", good_lines()))
    assert log.models == ["small", "big"]
    assert log.ids == ["q0", "q1", "q2", "q3"]
    np.testing.assert_allclose(log.mean_cost(), [0.01, 0.5])
    np.testing.assert_allclose(log.mean_quality(), [0.5, 1.0])
    np.testing.assert_allclose(log.signals["logprob"][0], [-0.4, -0.1])
    assert log.answers[1, 0] == "B"
    assert log.present.all()
    assert log.tasks == ["t"] * 4 and log.inputs[2] == "question 2"
    assert log.path is not None and log.path.endswith("log.jsonl")


BAD_CASES = [
    # (how to break record 3's "big" output or the record, field, message)
    (
        lambda r: r["outputs"]["big"].__setitem__("cost", "abc"),
        "outputs.big.cost",
        "must be a number >= 0. Got 'abc' instead",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("cost", -1),
        "outputs.big.cost",
        "must be a number >= 0. Got -1 instead",
    ),
    (
        lambda r: r["outputs"]["big"].pop("cost"),
        "outputs.big.cost",
        "is required",
    ),
    (
        lambda r: r["outputs"]["big"].pop("correct"),
        "outputs.big",
        "needs 'correct' (true/false) or 'score' (0..1)",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("correct", "yes"),
        "outputs.big.correct",
        "must be true or false. Got 'yes' instead",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("score", 1.5),
        "outputs.big.score",
        "must be a number in [0, 1]. Got 1.5 instead",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("latency_ms", -3.0),
        "outputs.big.latency_ms",
        "must be a number >= 0 or null",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("tokens_in", "many"),
        "outputs.big.tokens_in",
        "must be a number >= 0 or null",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("samples", "A"),
        "outputs.big.samples",
        "must be a list of strings",
    ),
    (
        lambda r: r["outputs"]["big"].__setitem__("answer", ["A"]),
        "outputs.big.answer",
        "must be a string or null",
    ),
    (lambda r: r["outputs"].__setitem__("big", 3), "outputs.big", "must be an object"),
    (lambda r: r.pop("id"), "id", "is required"),
    (lambda r: r.__setitem__("id", ""), "id", "must be a non-empty string"),
    (lambda r: r.__setitem__("outputs", {}), "outputs", "must be a non-empty object"),
    (lambda r: r.__setitem__("input", 5), "input", "must be a string or a list of"),
    (lambda r: r.__setitem__("task", 7), "task", "must be a string"),
]


@pytest.mark.parametrize(("breaker", "field", "message"), BAD_CASES)
def test_a_bad_field_names_file_line_and_field(
    tmp_path: Path, breaker: Any, field: str, message: str
) -> None:
    lines: list[dict[str, Any] | str] = list(good_lines())
    bad = copy.deepcopy(lines[2])
    assert isinstance(bad, dict)
    breaker(bad)
    lines[2] = bad
    path = write(tmp_path / "log.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_replay(path)
    exc = info.value
    assert (exc.line, exc.field) == (3, field)
    assert str(exc).startswith(f"{path}:3, field '{field}': ")
    assert message in str(exc)


def test_the_documented_example_message(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [rec(i, **{"gpt-4o": out()}) for i in range(17)]
    lines[16]["outputs"]["gpt-4o"]["cost"] = "abc"  # type: ignore[index]
    path = write(tmp_path / "log.jsonl", lines)
    expected = f"{path}:17, field 'outputs.gpt-4o.cost': must be a number >= 0. Got 'abc' instead"
    with pytest.raises(DataError, match=re.escape(expected) + "$"):
        load_replay(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"id": "x", "outputs": ', "not valid JSON"),
        ("[1, 2]", "a line must hold one JSON object"),
        ('{"id": "q9", "outputs": {"big": {"correct": true, "cost": NaN}}}', "must be a number"),
    ],
)
def test_unparseable_lines_name_the_line(tmp_path: Path, raw: str, message: str) -> None:
    lines: list[dict[str, Any] | str] = [*good_lines(), raw]
    path = write(tmp_path / "log.jsonl", lines)
    with pytest.raises(DataError, match=re.escape(f"{path}:5")) as info:
        load_replay(path)
    assert message in str(info.value)


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [good_lines()[0], "", good_lines()[1], "   "]
    bad = rec(7, big={"correct": True, "cost": "x"})
    path = write(tmp_path / "log.jsonl", [*lines, bad])
    with pytest.raises(DataError) as info:
        load_replay(path)
    assert info.value.line == 5


def test_duplicate_id_repeating_a_model_is_an_error(tmp_path: Path) -> None:
    lines = good_lines()
    path = write(tmp_path / "log.jsonl", [*lines, copy.deepcopy(lines[1])])
    with pytest.raises(
        DataError, match=r"log\.jsonl:5, field 'id': duplicate id 'q1' \(first on line 2\)"
    ):
        load_replay(path)


def test_duplicate_id_with_another_input_is_an_error(tmp_path: Path) -> None:
    other = rec(1, extra=out())
    other["input"] = "something else"
    path = write(tmp_path / "log.jsonl", [*good_lines(), other])
    with pytest.raises(DataError, match="has a different input"):
        load_replay(path)


def test_one_query_split_over_two_lines_is_merged(tmp_path: Path) -> None:
    lines = [rec(0, small=out(True, 0.01)), rec(1, small=out(False, 0.01), big=out(True, 0.5))]
    lines.append(rec(0, big=out(False, 0.5)))  # the rest of query q0, as RouterBench does
    log = load_replay(write(tmp_path / "log.jsonl", lines))
    assert log.ids == ["q0", "q1"]
    assert log.present.all()
    assert log.merged_duplicates == 1
    np.testing.assert_allclose(log.quality, [[1.0, 0.0], [0.0, 1.0]])
    assert any("merged" in n for n in log.notes)


def test_skip_bad_writes_rejects_and_counts_them(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    lines: list[dict[str, Any] | str] = list(good_lines())
    broken = '{"id": "qX", "outputs": {"big": {"correct": true, "cost": "abc"}}}'
    lines.insert(1, broken)
    lines.append("not json at all")
    path = write(tmp_path / "data.jsonl", lines)
    log = load_replay(path, skip_bad=True)
    assert len(log) == 4 and log.skipped == 2
    default = tmp_path / "data.rejects.jsonl"
    assert log.reject_path == str(default)
    rejects = [json.loads(x) for x in default.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 6]
    assert rejects[0]["raw"] == broken
    assert rejects[0]["field"] == "outputs.big.cost"
    assert "data.jsonl:2, field 'outputs.big.cost'" in rejects[0]["reason"]
    assert rejects[1]["raw"] == "not json at all"
    assert "not valid JSON" in rejects[1]["reason"]


def test_skip_bad_to_a_named_reject_file_and_nothing_written_when_clean(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [*good_lines(), '{"id": 1}'])
    rej = tmp_path / "out" / "rej.jsonl"
    rej.parent.mkdir()
    log = load_replay(path, skip_bad=True, reject_path=rej)
    assert log.skipped == 1 and log.reject_path == str(rej)
    assert len(rej.read_text().splitlines()) == 1

    clean_rej = tmp_path / "clean.rejects.jsonl"
    clean = load_replay(
        write(tmp_path / "clean.jsonl", good_lines()), skip_bad=True, reject_path=clean_rej
    )
    assert clean.skipped == 0 and clean.reject_path is None
    assert not clean_rej.exists()


def test_a_log_with_no_usable_line_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", ["nope", "[]"])
    with pytest.raises(DataError, match="no usable queries: all 2 lines were bad"):
        load_replay(path, skip_bad=True, reject_path=tmp_path / "r.jsonl")
    with pytest.raises(DataError, match="holds no records"):
        load_replay(write(tmp_path / "empty.jsonl", []))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_replay(tmp_path / "nope.jsonl")


def test_missing_outputs_count_wrong_at_the_models_mean_cost(tmp_path: Path) -> None:
    lines = [
        rec(0, small=out(True, 0.01), big=out(True, 0.4)),
        rec(1, small=out(True, 0.03)),  # big missing
        rec(2, small=out(False, 0.02), big=out(True, 0.6)),
        rec(3, big=out(True, 0.5)),  # small missing
        rec(4, small=out(True, 0.02)),  # big missing
    ]
    log = load_replay(write(tmp_path / "log.jsonl", lines))
    assert log.models == ["small", "big"]
    assert log.missing_counts() == {"small": 1, "big": 2}
    assert log.rows_with_missing() == 3
    np.testing.assert_array_equal(log.present[:, 1], [True, False, True, True, False])
    assert log.cost[1, 1] == pytest.approx(0.5)  # mean of 0.4, 0.6, 0.5
    assert log.cost[3, 0] == pytest.approx(0.02)  # mean of 0.01, 0.03, 0.02, 0.02
    assert log.quality[1, 1] == 0.0 and log.quality[3, 0] == 0.0
    assert log.answers[1, 1] is None
    assert math.isnan(log.latency_ms[1, 1])
    np.testing.assert_allclose(log.mean_quality(), [3 / 5, 3 / 5])


def test_score_is_the_quality_when_correct_is_absent(tmp_path: Path) -> None:
    lines = [
        rec(0, m={"answer": "x", "score": 0.25, "cost": 0.1}),
        rec(1, m={"score": 1, "cost": 0}),
    ]
    log = load_replay(write(tmp_path / "log.jsonl", lines))
    np.testing.assert_allclose(log.quality[:, 0], [0.25, 1.0])
    assert "score" not in log.signals  # it is the quality here, not a confidence
    assert log.answers[1, 0] is None  # answer may be absent or null


def test_score_beside_correct_is_a_signal_unless_it_repeats_the_grade(tmp_path: Path) -> None:
    judged = [rec(0, m=out(True, score=0.8)), rec(1, m=out(False, score=0.3))]
    log = load_replay(write(tmp_path / "a.jsonl", judged))
    np.testing.assert_allclose(log.quality[:, 0], [1.0, 0.0])
    np.testing.assert_allclose(log.signals["score"][:, 0], [0.8, 0.3])

    graded = [rec(0, m=out(True, score=1.0)), rec(1, m=out(False, score=0.0))]
    log = load_replay(write(tmp_path / "b.jsonl", graded))
    assert "score" not in log.signals
    assert any("'score' equals 'correct'" in n for n in log.notes)


def test_numeric_extras_are_signals_and_flags_are_not(tmp_path: Path) -> None:
    lines = [
        rec(0, small=out(logprob=-0.2, margin=0.7, tokens_estimated=True), big=out(cost=1.0)),
        rec(1, small=out(logprob=float("-inf")), big=out(cost=1.0, verifier=2)),
    ]
    log = load_replay(write(tmp_path / "log.jsonl", lines))
    assert sorted(log.signals) == ["logprob", "margin", "verifier"]
    lp = log.signals["logprob"]
    assert lp[0, 0] == -0.2 and lp[1, 0] == -math.inf and np.isnan(lp[:, 1]).all()
    assert np.isnan(log.signals["margin"][1, 0])
    assert log.signals["verifier"][1, 1] == 2.0
    assert log.signals_of("small") == ["logprob", "margin"]
    assert log.signals_of("big") == ["verifier"]


def test_samples_are_kept_and_give_a_vote_signal(tmp_path: Path) -> None:
    lines = [
        rec(0, m=out(samples=["A", "A", "B", "A"])),
        rec(1, m=out(samples=["A", "B"])),
        rec(2, m=out()),
    ]
    log = load_replay(write(tmp_path / "log.jsonl", lines))
    assert log.samples is not None and log.samples[0, 0] == ["A", "A", "B", "A"]
    assert log.samples[2, 0] is None
    np.testing.assert_allclose(log.signals["vote"][:, 0], [0.75, 0.5, np.nan])


def test_tokens_latency_null_answers_and_numeric_ids(tmp_path: Path) -> None:
    lines = [
        {"id": 7, "input": [{"role": "user", "content": "hi"}], "reference": "4",
         "outputs": {"m": {"answer": 4, "correct": True, "cost": 0.1, "latency_ms": 12.5,
                           "tokens_in": 10, "tokens_out": None}}},
        {"id": "8", "outputs": {"m": {"answer": None, "correct": False, "cost": 0.1}}},
    ]  # fmt: skip
    log = load_replay(write(tmp_path / "log.jsonl", lines))
    assert log.ids == ["7", "8"]
    assert log.answers[0, 0] == "4" and log.answers[1, 0] is None
    assert log.tokens_in is not None and log.tokens_in[0, 0] == 10 and np.isnan(log.tokens_in[1, 0])
    assert log.tokens_out is None  # never recorded (only nulls)
    assert log.latency_ms[0, 0] == 12.5
    assert log.references == ["4", None]
    assert log.inputs[0] == [{"role": "user", "content": "hi"}]

    no_tokens = load_replay(write(tmp_path / "b.jsonl", [rec(0, m=out())]))
    assert no_tokens.tokens_in is None and no_tokens.samples is None


def test_rows_for_maps_ids_and_names_an_unknown_one(tmp_path: Path) -> None:
    log = load_replay(write(tmp_path / "log.jsonl", good_lines()))
    np.testing.assert_array_equal(log.rows_for(["q3", "q0", "q3"]), [3, 0, 3])
    with pytest.raises(DataError, match="id 'zz' is not in the replay log"):
        log.rows_for(["q1", "zz"])
