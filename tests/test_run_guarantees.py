"""`tiered run`'s anytime-valid agreement bound: the summary, the alarm, --fail-below-target."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tiered.runner.counters import LearnerStats, RunCounters, history_row
from tiered.runner.summary import RunSummary, stored_run, summarise
from tiered.store import RunStore

from ._cli import tiered as run_cli

WORDS = {
    "pos": ["good", "great", "fine", "lovely", "superb"],
    "neg": ["bad", "awful", "poor", "grim", "sad"],
}
FILLER = ["the", "a", "movie", "plot", "actor", "scene", "story", "film"]
FLIP = {"pos": "neg", "neg": "pos"}


def write_stream(path: Path, n: int, *, break_at: int | None = None) -> Path:
    """Two classes told apart by their words; from ``break_at`` on the expert's label
    (the `label` column) is the other class, so the cheap stage is confidently wrong."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            lab = rng.choice(sorted(WORDS))
            text = " ".join(rng.choice(FILLER + WORDS[lab]) for _ in range(8))
            if break_at is not None and i >= break_at:
                lab = FLIP[lab]
            f.write(json.dumps({"id": f"r{i}", "text": text, "label": lab}) + "\n")
    return path


def tiered(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, stdout with whitespace collapsed)."""
    code, out, _ = run_cli(capsys, *args)
    # the summary table wraps long lines and draws borders: compare words only
    return code, " ".join(out.replace("│", " ").split())


QUICK = ["--expert-field", "label", "--expert-cost", "0.001", "--no-progress"]
QUICK += ["--target-agreement", "0.96", "--fail-below-target"]
# For a broken stream: in batches of 500 the confidently wrong stage answers a whole
# batch before the controller sees an audit of it (smaller batches often let the
# controller defer in time, and then the agreement never falls far enough for an alarm).
BROKEN = ["--batch-size", "500"]


def test_a_broken_cheap_stage_raises_the_alarm_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_stream(tmp_path / "in.jsonl", 4000, break_at=2000)
    out = tmp_path / "out.jsonl"
    code, text = tiered(capsys, "run", str(src), "-o", str(out), *QUICK, *BROKEN)
    assert code == 3
    assert "ALARM: the upper bound fell below the target at item" in text
    assert "every item went to the expert until it recovered" in text
    assert "with 95% confidence at every item" in text
    # every record was still answered: the exit code reports, it does not cut the run short
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4000
    # the alarm comes after the break, and the history rows carry the bound over time
    saved = stored_run(Path(f"{out}.tiered.sqlite"))
    assert saved.summary.alarms >= 1
    assert saved.summary.first_alarm_at is not None and saved.summary.first_alarm_at > 2000
    assert saved.summary.target_missed
    rows = saved.history
    assert all("cs_low" in r and "cs_high" in r and "below_target" in r for r in rows)
    assert any(r["below_target"] for r in rows)
    assert not any(r["below_target"] for r in rows if r["n"] <= 2000)
    assert all(r["cs_low"] <= r["cs_high"] for r in rows)


def test_a_healthy_stream_exits_0_and_shows_the_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_stream(tmp_path / "in.jsonl", 2000)
    out = tmp_path / "out.jsonl"
    code, text = tiered(capsys, "run", str(src), "-o", str(out), *QUICK)
    assert code == 0
    assert "ALARM" not in text
    assert "agreement (anytime) agreement >= 0." in text
    with RunStore(Path(f"{out}.tiered.sqlite")) as store:
        last = store.history()[-1]
    assert last["alarms"] == 0 and last["below_target"] is False
    assert 0.0 < last["cs_low"] <= last["cs_high"] <= 1.0


def test_without_the_flag_an_alarm_does_not_change_the_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_stream(tmp_path / "in.jsonl", 4000, break_at=2000)
    quick = [a for a in QUICK if a != "--fail-below-target"]
    out = str(tmp_path / "o.jsonl")
    code, text = tiered(capsys, "run", str(src), "-o", out, *quick, *BROKEN)
    assert code == 0
    assert "ALARM:" in text


def test_help_documents_exit_code_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = tiered(capsys, "run", "--help")
    assert code == 0
    assert "--fail-below-target" in text
    assert "code 3" in text


def _stats(**kw: object) -> LearnerStats:
    base: dict[str, object] = dict(
        n_items=100, expert_calls=10, audits=5, agreement=0.97, ci_low=0.9, ci_high=0.99,
        usd_spent=1.0, usd_expert_only=10.0, window_agreement=None, window_ci_low=None,
        window_ci_high=None, window_expert_share=None, threshold=0.8,
    )  # fmt: skip
    base.update(kw)
    return LearnerStats(**base)  # type: ignore[arg-type]


def test_summary_texts_and_target_missed() -> None:
    c = RunCounters(records=100, items=100)
    ok = summarise(
        c, _stats(cs_low=0.951, cs_high=0.99, confidence=0.95), ["a", "expert"], target=0.95
    )
    assert ok.bound_text() == "agreement >= 0.951 with 95% confidence at every item"
    assert ok.alarm_text() is None
    assert not ok.target_missed

    alarmed = summarise(
        c,
        _stats(cs_low=0.8, cs_high=0.9, confidence=0.95, alarms=2, first_alarm_at=1234),
        ["a", "expert"],
        target=0.95,
        escalate=False,
    )
    text = alarmed.alarm_text()
    assert text is not None and "at item 1,234 (2 times)" in text
    assert "every item went to the expert" not in text  # escalate off: it did not
    assert alarmed.target_missed

    # no alarm counted (a store from before), yet the final upper bound is below the target
    ended_below = summarise(c, _stats(cs_low=0.8, cs_high=0.9), ["a", "expert"], target=0.95)
    assert ended_below.target_missed
    # no target: nothing to miss
    assert not summarise(c, _stats(cs_high=0.5), ["a", "expert"], target=None).target_missed


def test_history_rows_carry_the_bound() -> None:
    row = history_row(
        RunCounters(items=10), _stats(cs_low=0.9, cs_high=0.99, below_target=True), 1.0, 0.95
    )
    assert (row["cs_low"], row["cs_high"], row["below_target"]) == (0.9, 0.99, True)


def test_a_summary_before_any_item_has_no_bound() -> None:
    s = RunSummary(
        records=0, items=0, rejects=0, expert_calls=0, expert_share=0.0, audits=0,
        agreement=None, ci_low=None, ci_high=None, target=0.9, usd_spent=0.0,
        usd_expert_only=0.0, wall_s=0.0, stage_share={}, cs_low=0.0, cs_high=1.0,
    )  # fmt: skip
    assert s.bound_text() is None
    assert not s.target_missed


# --------------------------------------------------------------------------- /metrics


def _sample(text: str, name: str, cascade: str) -> float:
    """The value of metric ``name`` for ``cascade`` in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(f'{name}{{cascade="{cascade}"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {cascade} not exposed")


def test_metrics_expose_the_bounds_and_count_each_alarm_once() -> None:
    from tiered.serve.metrics import GatewayMetrics

    m = GatewayMetrics()
    m.observe_bounds("c", 0.91, 0.99, False, 0)
    text = m.render().decode()
    assert _sample(text, "tiered_agreement_cs_low", "c") == 0.91
    assert _sample(text, "tiered_agreement_cs_high", "c") == 0.99
    assert _sample(text, "tiered_agreement_below_target", "c") == 0.0
    assert _sample(text, "tiered_agreement_alarms_total", "c") == 0.0
    # the learner reports its running total: an alarm seen on many requests counts once
    m.observe_bounds("c", 0.7, 0.85, True, 1)
    m.observe_bounds("c", 0.7, 0.84, True, 1)
    m.observe_bounds("c", 0.8, 0.95, False, 1)
    m.observe_bounds("c", 0.7, 0.85, True, 2)
    text = m.render().decode()
    assert _sample(text, "tiered_agreement_alarms_total", "c") == 2.0
    assert _sample(text, "tiered_agreement_below_target", "c") == 1.0
    assert _sample(text, "tiered_agreement_cs_high", "c") == 0.85


def test_an_online_classify_cascade_reports_its_bounds_on_metrics(tmp_path: Path) -> None:
    from .test_serve_unit import CountingExpert, Memorizer, classify_concurrently, online_gateway

    gw = online_gateway(
        tmp_path / "gw.sqlite",
        CountingExpert(),
        Memorizer(),
        audit_rate=0.5,
        target_agreement=0.9,
        mu=None,
    )
    classify_concurrently(gw, per_request=6)
    learner = gw.cascades["sent"].learner
    cs = learner.confidence_sequence()
    text = gw.metrics.render().decode()
    assert _sample(text, "tiered_agreement_cs_low", "sent") == pytest.approx(cs.low)
    assert _sample(text, "tiered_agreement_cs_high", "sent") == pytest.approx(cs.high)
    assert 0.0 < cs.low <= cs.high <= 1.0  # the bound was computed, not the 0..1 default
    assert _sample(text, "tiered_agreement_below_target", "sent") == float(
        learner.controller.escalated
    )
    assert _sample(text, "tiered_agreement_alarms_total", "sent") == learner.controller.alarms
    gw.close()
