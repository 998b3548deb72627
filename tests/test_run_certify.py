"""``tiered run ... --certify``: certified batch labelling of a finite file, end to end."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests._cli import tiered
from tiered.core import AnswerBatch, Item, ModelTags, register_model
from tiered.core.spec import BuildContext
from tiered.errors import ConfigError
from tiered.runner.certified import (
    CertifiedRun,
    CertifySpec,
    metric_value,
    parse_certify,
    rest_target,
)
from tiered.runner.plan import make_plan

CLASSES = ("neg", "pos")
CALLS: list[int] = []  # batch sizes the counting expert was asked about


class _ScoredColumn:
    """A frozen cheap stage: the label in field ``label`` (default ``cheap``) with the
    probability in field ``p`` (default ``p``)."""

    name = "scored_column"
    tags = ModelTags()

    def __init__(self, label: str = "cheap", p: str = "p") -> None:
        self.label, self.p = label, p

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        labels = [str(it.fields[self.label]) for it in items]
        p = np.array([float(it.fields[self.p]) for it in items])
        probs = np.empty((len(items), 2))
        for j, lab in enumerate(labels):
            probs[j, CLASSES.index(lab)] = p[j]
            probs[j, 1 - CLASSES.index(lab)] = 1.0 - p[j]
        answers = AnswerBatch.from_labels(labels, cost=0.0001)
        answers.probs, answers.classes = probs, CLASSES
        return answers


class _CountingColumn:
    """The expert: the ``truth`` column, recording the size of every batch it is asked."""

    name = "counting_column"
    tags = ModelTags()

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        CALLS.append(len(items))
        return AnswerBatch.from_labels([str(it.fields["truth"]) for it in items], cost=0.01)


@register_model("test-scored-column")
def _scored(spec: dict[str, Any], ctx: BuildContext) -> _ScoredColumn:
    return _ScoredColumn(spec.get("label", "cheap"), spec.get("p", "p"))


@register_model("test-counting-column")
def _counting(spec: dict[str, Any], ctx: BuildContext) -> _CountingColumn:
    return _CountingColumn()


def _data(path: Path, n: int, *, error: float = 0.1, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records; the cheap column is wrong on a share ``error`` of them, mostly where
    its probability is low (a useful but imperfect score)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        truth = rng.choice(CLASSES)
        wrong = rng.random() < error
        cheap = CLASSES[1 - CLASSES.index(truth)] if wrong else truth
        p = rng.uniform(0.5, 0.8) if wrong else rng.uniform(0.6, 1.0)
        word = {"pos": "good", "neg": "bad"}[truth]
        noise = " ".join(rng.choice(["the", "a", "film", "plot"]) for _ in range(4))
        text = f"{noise} {word if rng.random() < 0.9 else 'so-so'}"
        rows.append({"id": f"r{i}", "text": text, "truth": truth, "cheap": cheap, "p": p})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def _config(tmp: Path, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "cheap": [{"name": "cheap", "model": {"kind": "test-scored-column"}}],
        "expert": {"model": {"kind": "test-counting-column"}, "usd_per_call": 0.01},
        "online": {"deferral_signal": "max_prob"},
        "input": {"id_field": "id"},
        "batch_size": 64,
    }
    cfg.update(extra)
    path = tmp / "cascade.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _achieved(rows: list[dict[str, Any]], truth: dict[str, str], metric: str, pos: str | None):
    labels = np.array([r["label"] for r in rows], dtype=object)
    real = np.array([truth[r["id"]] for r in rows], dtype=object)
    return metric_value(labels, real, metric, pos)


def _certify(capsys: pytest.CaptureFixture[str], tmp: Path, *extra: str) -> tuple[int, str, str]:
    """``tiered run cascade.yaml in.jsonl -o out.jsonl EXTRA`` with the default config."""
    return tiered(
        capsys, "run", str(_config(tmp)), str(tmp / "in.jsonl"), "-o", str(tmp / "out.jsonl"),
        *extra,
    )  # fmt: skip


def test_accuracy_target_met_with_fewer_oracle_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data(tmp_path / "in.jsonl", 2000, error=0.1)
    truth = {r["id"]: r["truth"] for r in data}
    CALLS.clear()
    code, out, err = _certify(capsys, tmp_path, "--certify", "accuracy>=0.95")
    assert code == 0, err
    rows = _out(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in data]  # every item once, in order
    assert _achieved(rows, truth, "accuracy", None) >= 0.95
    oracle = [r for r in rows if r["stage"] == "expert"]
    assert 0 < len(oracle) < 2000 and sum(CALLS) == len(oracle)
    assert max(CALLS) <= 64  # the expert is asked in batches of batch_size
    assert all(r["label"] == truth[r["id"]] == r["expert_label"] for r in oracle)
    kept = [r for r in rows if r["stage"] == "cheap"]
    assert len(kept) > 700 and all("expert_label" not in r for r in kept)
    assert all(r["certified"] is True for r in rows)
    assert "accuracy >= 0.95 with 95% confidence over all 2,000 items" in out
    assert f"oracle calls: {len(oracle):,} of 2,000 items" in out
    assert "against the expert column" not in out  # this expert is not a label column


def test_two_cheap_stages_route_as_the_frozen_cascade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first stage answers where it is sure (top probability >= 1 - mu = 0.9); elsewhere
    the surer of the two stages gives the label (here the second, always right at 0.95)."""
    data = _data(tmp_path / "in.jsonl", 1000, error=0.2)
    with (tmp_path / "in.jsonl").open("w", encoding="utf-8") as f:
        for r in data:
            f.write(json.dumps(r | {"second": r["truth"], "p2": 0.95}) + "\n")
    second = {"name": "second", "model": {"kind": "test-scored-column", "label": "second",
                                           "p": "p2"}}  # fmt: skip
    cfg = _config(tmp_path)
    conf = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    conf["cheap"].append(second)
    cfg.write_text(yaml.safe_dump(conf), encoding="utf-8")
    code, _, err = tiered(
        capsys, "run", str(cfg), str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
        "--certify", "accuracy>=0.95",
    )  # fmt: skip
    assert code == 0, err
    rows = _out(tmp_path / "out.jsonl")
    by_first = [r for r in rows if r["stage"] == "cheap"]
    by_second = [r for r in rows if r["stage"] == "second"]
    assert by_first and all(r["confidence"] >= 0.9 for r in by_first)
    assert len(by_second) > 300 and all(abs(r["confidence"] - 0.95) < 1e-4 for r in by_second)
    truth = {r["id"]: r["truth"] for r in data}
    assert _achieved(rows, truth, "accuracy", None) >= 0.95


def test_the_confidence_option_reaches_the_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _data(tmp_path / "in.jsonl", 500)
    code, out, err = _certify(
        capsys, tmp_path, "--certify", "accuracy >= 0.9", "--confidence", "0.8"
    )
    assert code == 0, err
    assert "accuracy >= 0.9 with 80% confidence over all 500 items" in out


@pytest.mark.parametrize(
    ("spec", "pos"), [("precision:pos>=0.97", "pos"), ("recall:neg>=0.97", "neg")]
)
def test_precision_and_recall_of_one_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, pos: str
) -> None:
    data = _data(tmp_path / "in.jsonl", 2000, error=0.1)
    truth = {r["id"]: r["truth"] for r in data}
    metric = spec.split(":")[0]
    code, out, err = _certify(capsys, tmp_path, "--certify", spec)
    assert code == 0, err
    rows = _out(tmp_path / "out.jsonl")
    assert _achieved(rows, truth, metric, pos) >= 0.97
    assert sum(r["stage"] == "expert" for r in rows) < 2000
    assert f"{metric} of '{pos}' >= 0.97 with 95% confidence over all 2,000 items" in out


def test_nothing_certifiable_sends_every_item_to_the_expert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the cheap stage is always wrong and no error is allowed (a target of 0.9 would let
    # the first 10% keep their wrong labels, untested: that still meets it)
    data = _data(tmp_path / "in.jsonl", 400, error=1.0)
    code, out, err = _certify(capsys, tmp_path, "--certify", "accuracy>=0.999")
    assert code == 0, err
    rows = _out(tmp_path / "out.jsonl")
    assert all(r["stage"] == "expert" for r in rows)
    assert [r["label"] for r in rows] == [r["truth"] for r in data]
    assert "nothing could be certified, so every item went to the expert" in out


def test_an_online_cascade_learns_on_an_expert_sample_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quick mode: hashed n-grams learn from a sample the label column labels; the sample's
    items output the expert's label and the rest is certified for the whole dataset."""
    data = _data(tmp_path / "in.jsonl", 3000)
    truth = {r["id"]: r["truth"] for r in data}
    code, out, err = tiered(
        capsys, "run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
        "--expert-field", "truth", "--expert-cost", "0.002", "--certify", "accuracy>=0.9",
        "--learn", "400",
    )  # fmt: skip
    assert code == 0, err
    rows = _out(tmp_path / "out.jsonl")
    assert _achieved(rows, truth, "accuracy", None) >= 0.9
    kept = [r for r in rows if r["stage"] == "hashed_ngram"]
    expert = [r for r in rows if r["stage"] == "expert"]
    assert len(expert) >= 400 and len(kept) > 1000  # it learned enough to keep many labels
    assert "over all 3,000 items" in out and "400 to teach the cheap stages" in out
    assert "accuracy against the expert column (measured)" in out


def test_the_learning_sample_shrinks_the_rest_s_error_budget() -> None:
    acc = CertifySpec("accuracy", 0.95)
    # 1,000 items allow 50 errors; the 200 sampled hold none, so the 800 others may hold 50
    assert rest_target(acc, 1000, 800) == pytest.approx(1 - 50 / 800)
    assert rest_target(acc, 1000, 1000) == 0.95
    assert rest_target(acc, 1000, 40) == pytest.approx(0.5 / 40)  # all 40 may be wrong
    assert rest_target(CertifySpec("recall", 0.9, "pos"), 1000, 800) == 0.9


def test_the_guarantee_holds_over_seeds_with_a_learning_sample(tmp_path: Path) -> None:
    _data(tmp_path / "in.jsonl", 1500, error=0.15)
    cfg = _config(tmp_path)
    spec = parse_certify("accuracy>=0.92")
    for seed in range(4):
        plan = make_plan([str(cfg), str(tmp_path / "in.jsonl")], tmp_path / f"o{seed}.jsonl")
        plan.config.seed = seed
        s = CertifiedRun(plan, spec, learn=300).run()
        assert s.learned == 300 and s.items == 1500
        truth = np.array([r["truth"] for r in _out(tmp_path / "in.jsonl")], dtype=object)
        got = np.array(s.certificate.labels, dtype=object)
        assert np.mean(got == truth) >= 0.92
        assert s.certificate.oracle_calls < 1500


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("accuracy", "expected accuracy>=T"),
        ("f1>=0.9", "expected accuracy>=T"),
        ("accuracy>=1.5", "must be a number in (0, 1]"),
        ("accuracy>=x", "must be a number in (0, 1]"),
        ("precision>=0.9", "give precision:LABEL>=T"),
        ("accuracy:pos>=0.9", "without a label"),
    ],
)
def test_a_bad_spec_is_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_certify(spec)
    assert info.value.field == "--certify"


def test_spec_parsing() -> None:
    assert parse_certify(" Recall : positive >= 0.9 ") == CertifySpec("recall", 0.9, "positive")
    assert parse_certify("accuracy>=1", 0.99) == CertifySpec("accuracy", 1.0, None, 0.99)
    with pytest.raises(ConfigError, match="confidence") as info:
        parse_certify("accuracy>=0.9", 1.0)
    assert info.value.field == "--confidence"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--certify", "accuracy>>0.9"], "field '--certify': expected accuracy>=T"),
        (["--confidence", "0.9"], "--confidence is for --certify"),
        (["--certify", "accuracy>=0.9", "--report", "r.html"], "--report does not apply"),
    ],
)
def test_bad_command_lines_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    _data(tmp_path / "in.jsonl", 50)
    code, _, err = _certify(capsys, tmp_path, *extra)
    assert code == 2 and message in err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_stream_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "redis://127.0.0.1:6399/items?group=g&consumer=c"
    code, _, err = tiered(
        capsys, "run", str(_config(tmp_path)), url, "-o", str(tmp_path / "out.jsonl"),
        "--certify", "accuracy>=0.9",
    )  # fmt: skip
    assert code == 2 and "certifies a finite dataset" in err and "not a Redis stream" in err
    cfg = _config(tmp_path, source=url)  # the config's own source: refused the same way
    code, _, err = tiered(
        capsys, "run", str(cfg), "-o", str(tmp_path / "out.jsonl"), "--certify", "accuracy>=0.9"
    )
    assert code == 2 and "certifies a finite dataset" in err


def test_rejects_and_an_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data(tmp_path / "in.jsonl", 300)
    with (tmp_path / "in.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "bad", "truth": "pos"}) + "\n")  # no text
    args = [
        "run", str(_config(tmp_path)), str(tmp_path / "in.jsonl"),
        "-o", str(tmp_path / "out.jsonl"), "--certify", "accuracy>=0.9",
    ]  # fmt: skip
    code, out, err = tiered(capsys, *args)
    assert code == 0, err
    assert len(_out(tmp_path / "out.jsonl")) == len(data)
    assert [r["line"] for r in _out(tmp_path / "out.jsonl.rejects.jsonl")] == [301]
    assert "records: 301, rejected: 1" in out
    code, _, err = tiered(capsys, *args)  # a second run does not overwrite silently
    assert code == 2 and "already holds data" in err and "--fresh" in err
    code, _, err = tiered(capsys, *args, "--fresh")
    assert code == 0, err
    assert len(_out(tmp_path / "out.jsonl")) == len(data)
