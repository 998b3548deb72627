"""What ``tiered calibrate`` recommends: learned families where signals are weak, verdicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tiered.calibrate import LogView, calibrate, evaluate_stages
from tiered.calibrate import auto as auto_mod
from tiered.calibrate.auto import calibrate_log, frontier_models, signal_report
from tiered.calibrate.learned.estimator import QualityEstimator
from tiered.calibrate.smooth import smoothed_quality
from tiered.calibrate.verdict import verdict
from tiered.cli import app
from tiered.core.spec import BuildContext, CascadeSpec, load_cascade
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog
from tiered.replay.model import replay_items

from .test_calibrate import FAST, make_log
from .test_routing import _write_jsonl, synthetic_log


def write_log(log: ReplayLog, path: Path) -> Path:
    """The log as a JSONL replay file, its log-probabilities included."""
    import json

    lp = log.signals.get("logprob")
    with path.open("w", encoding="utf-8") as f:
        for i, rid in enumerate(log.ids):
            outputs = {}
            for j, m in enumerate(log.models):
                out = {"answer": log.answers[i, j], "correct": bool(log.quality[i, j]),
                       "cost": float(log.cost[i, j])}  # fmt: skip
                if lp is not None and np.isfinite(lp[i, j]):
                    out["logprob"] = float(lp[i, j])
                outputs[m] = out
            f.write(json.dumps({"id": rid, "input": log.inputs[i], "outputs": outputs}) + "\n")
    return path


def test_signal_report_tells_strong_weak_and_missing_signals() -> None:
    strong = signal_report(LogView.of(make_log(240, 0)))
    assert strong.strong and "strong" in strong.text()
    # the signal is noise: it ranks right and wrong answers no better than chance
    noisy = make_log(240, 0)
    rng = np.random.default_rng(1)
    noisy.signals["logprob"] = -rng.random(noisy.signals["logprob"].shape)
    weak = signal_report(LogView.of(noisy))
    assert not weak.strong and "weak" in weak.text()
    none = signal_report(LogView.of(make_log(240, 0, signals=False)))
    assert not none.strong and none.text() == "the log has no confidence signals"


def test_strong_signals_keep_the_confidence_rules_and_say_why() -> None:
    rec = calibrate_log(make_log(240, 0), min_quality="top", settings=FAST)
    assert rec.selection is None and rec.family == "confidence"
    assert rec.why.startswith("learned families not tried: strong confidence signals")
    assert rec.spec.metadata["verdict"] == rec.verdict.line


def test_weak_signals_train_the_learned_families_and_the_winner_is_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the text tells easy queries from hard ones; the models record no confidence at all
    monkeypatch.setattr(auto_mod, "MIN_ROWS", 100)
    log = synthetic_log(400)
    rec = calibrate_log(log, min_quality="top*0.95", folds=3)
    assert rec.selection is not None
    assert {r.family for r in rec.selection.results} >= {"confidence", "routing"}
    assert rec.why.startswith("learned families trained (the log has no confidence signals")
    assert rec.family == rec.selection.winner.family == "routing"
    assert "routing won" in rec.why
    assert rec.spec.metadata["rule_family_chosen"] == "routing"
    assert rec.verdict.kind == "cascade" and "cross-validation" in rec.verdict.line


def with_a_dominated_model(log: ReplayLog) -> ReplayLog:
    """``log`` plus a model dearer and worse than its best one."""
    n = len(log)
    wasted = np.zeros((n, 1))
    answers = np.column_stack([log.answers, np.full(n, "Z", dtype=object)])
    return dataclasses.replace(
        log,
        models=[*log.models, "waste"],
        present=np.ones((n, log.n_models + 1), dtype=bool),
        quality=np.column_stack([log.quality, wasted]),
        cost=np.column_stack([log.cost, np.full(n, 5e-3)]),
        latency_ms=np.full((n, log.n_models + 1), 10.0),
        answers=answers,
    )


def test_routing_over_the_frontier_models_serves_every_objective(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(auto_mod, "MIN_ROWS", 100)
    log = with_a_dominated_model(synthetic_log(400))
    rec = calibrate_log(log, min_quality="top*0.95", folds=3)
    assert rec.family == "routing"
    for other in (rec, rec.with_objective(min_quality="top*0.9"), rec.with_objective(budget=6e-4)):
        path = other.save(tmp_path / "c.yaml")
        ctx = BuildContext(base_dir=tmp_path, resources={"replay_log": log})
        cascade = load_cascade(path, ctx)
        assert [s.name for s in cascade.stages] == ["small", "big"]  # "waste" left out
        assert len(cascade.run(replay_items(log))) == len(log)


def test_too_few_rows_for_learned_families_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = calibrate_log(synthetic_log(120), min_quality="top", folds=3)
    assert rec.selection is None
    assert "too few" in rec.why and str(auto_mod.MIN_ROWS) in rec.why


def test_learned_families_over_the_time_budget_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auto_mod, "MIN_ROWS", 100)
    rec = calibrate_log(synthetic_log(400), min_quality="top", folds=3, time_budget=1e-6)
    assert rec.selection is None and rec.family == "confidence"
    assert "over the 0 s budget" in rec.why and "--learned always" in rec.why


def test_another_objective_reuses_every_fitted_estimator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auto_mod, "MIN_ROWS", 100)
    rec = calibrate_log(synthetic_log(400), min_quality="top*0.95", folds=3)
    fits = []
    original = QualityEstimator.fit

    def counting(self: QualityEstimator, *a: object, **k: object) -> QualityEstimator:
        fits.append(1)
        return original(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(QualityEstimator, "fit", counting)
    other = rec.with_objective(min_quality="top*0.9")
    assert other.objective.min_quality is not None
    assert other.objective.min_quality.text == "top*0.9"
    assert fits == []  # the final routing estimator was fitted already


def test_smoothed_quality_keeps_each_models_mean_and_drops_outcome_noise() -> None:
    view = LogView.of(make_log(240, 0))
    q = smoothed_quality(view)
    assert ((q > 0) & (q < 1)).mean() > 0.5  # estimates, not 0/1 outcomes
    assert np.all(np.isclose(q * 50, np.round(q * 50)))  # rounded to steps of 1/50
    np.testing.assert_allclose(q.mean(axis=0), view.quality.mean(axis=0), atol=0.01)
    # the estimates rank right answers above wrong ones (they read the signals)
    right = view.quality[:, 0] > 0.5
    assert q[right, 0].mean() > q[~right, 0].mean() + 0.2
    # graded scores are left as they are
    graded = make_log(60, 0)
    graded.quality[0, 0] = 0.5
    gv = LogView.of(graded)
    assert np.array_equal(smoothed_quality(gv), gv.quality)


def test_models_giving_the_same_answer_get_the_same_smoothed_chance() -> None:
    log = make_log(240, 1)
    log.answers[5, 0] = None  # a missing answer is never pooled with the others
    log.quality[5, 0] = 0.0
    view = LogView.of(log)
    q = smoothed_quality(view)
    codes = view.codes[view.best_extract()]
    pairs = 0
    for j in range(view.m):
        for k in range(j + 1, view.m):
            same = (codes[:, j] == codes[:, k]) & (codes[:, j] >= 0) & (codes[:, k] >= 0)
            pairs += int(same.sum())
            np.testing.assert_array_equal(q[same, j], q[same, k])
    assert pairs > 200  # the log has plenty of shared answers
    assert q[5, 0] == 0.0
    # a different answer on the same row keeps its own estimate
    differ = codes[:, 0] != codes[:, 3]
    assert not np.array_equal(q[differ, 0], q[differ, 3])


def test_equal_answers_keep_their_own_chances_when_the_log_grades_them_apart() -> None:
    # as code graded by tests: the same normalised text is sometimes right, sometimes not
    log = make_log(240, 1)
    same = np.flatnonzero(log.answers[:, 0] == log.answers[:, 3])[:20]
    log.quality[same, 0] = 1.0 - log.quality[same, 3]
    view = LogView.of(log)
    q = smoothed_quality(view)
    assert not np.array_equal(q[same, 0], q[same, 3])


def test_fitted_numbers_of_a_smoothed_calibration_are_the_recorded_ones() -> None:
    log = make_log(240, 0)
    rec = calibrate_log(log, min_quality="top", settings=FAST)
    chosen = rec.calibration.chosen
    out = evaluate_stages(LogView.of(log), chosen.config.stage_refs(log.models))
    assert chosen.quality == pytest.approx(out.mean_quality)
    assert rec.calibration.top_quality == pytest.approx(log.quality.mean(axis=0).max())
    assert rec.spec.metadata["expected"]["quality"] == pytest.approx(out.mean_quality)
    other = rec.with_objective(min_quality="top-0.02")
    c2 = other.calibration.chosen
    out2 = evaluate_stages(LogView.of(log), c2.config.stage_refs(log.models))
    assert c2.quality == pytest.approx(out2.mean_quality)


def test_routing_heads_are_the_models_no_other_beats() -> None:
    log = make_log(240, 0, skills=(0.0, -0.5, 0.9, 1.4), prices=(1e-5, 2e-5, 1e-4, 4e-4))
    # m1 is dearer and worse than m0: cascade routing has no use for it
    assert frontier_models(LogView.of(log)) == ["m0", "m2", "m3"]


def test_the_verdict_says_when_cross_validation_rejected_cheaper_cascades() -> None:
    cal = calibrate(make_log(240, 2), min_quality="top", settings=FAST, min_saving=0.05)
    v = verdict(cal)
    assert v.kind == "top_alone"
    assert v.line.startswith("cheaper cascades met top on the fitted log (")
    assert "points in cross-validation: use m3 alone" in v.line
    # and it offers the nearest relaxed target that pays off, with its held-out numbers
    assert v.alternative is not None and v.alternative.relative_cost < 0.95
    assert f"or accept --min-quality {v.alternative.min_quality} for " in v.line


def test_the_verdict_when_no_cascade_is_cheaper() -> None:
    log = make_log(240, 0, skills=(-1.0, 1.4), prices=(1e-5, 4e-4), signals=False)
    v = verdict(calibrate(log, min_quality="top", settings=FAST))
    assert v.kind == "top_alone"
    assert v.line == "no cascade meets top for less than m1 on this log: use m1 alone"


def test_a_cascade_saving_too_little_is_not_worth_it() -> None:
    log = make_log(240, 0)
    cal = calibrate(log, min_quality="top", settings=FAST)
    assert len(cal.chosen.stages) > 1  # a real cascade, saving about a quarter
    v = verdict(cal, min_saving=0.9)
    assert v.kind == "not_worth"
    assert v.line.startswith("not worth a cascade: the best one saves only ")
    assert v.line.endswith("use m3 alone")
    # the calibrator itself keeps the best model when no cascade saves enough held out
    strict = calibrate(log, min_quality="top", settings=FAST, min_saving=0.9)
    assert strict.chosen.stages == ["m3"]
    line = verdict(strict, min_saving=0.9).line
    assert line.startswith("the cheapest cascade meeting top on the fitted log saves only ")
    assert "(less than 90%): use m3 alone" in line
    with pytest.raises(ConfigError, match="min_saving"):
        calibrate(log, min_quality="top", settings=FAST, min_saving=1.0)


def test_a_cheaper_single_model_is_recommended_alone() -> None:
    log = make_log(240, 0, skills=(1.0, 1.4), prices=(1e-5, 4e-4), signals=False)
    v = verdict(calibrate(log, min_quality="top-0.1", settings=FAST))
    assert v.kind == "model" and v.line.startswith("use m0 alone: it meets top-0.1 at ")


def test_cli_calibrate_prints_the_family_and_a_one_line_verdict(tmp_path: Path) -> None:
    path = write_log(make_log(240, 2), tmp_path / "log.jsonl")
    out = tmp_path / "c.yaml"
    got = CliRunner().invoke(
        app,
        ["calibrate", str(path), "-o", str(out), "--max-stages", "3"],
        env={"COLUMNS": "80"},
    )
    assert got.exit_code == 0, got.output
    lines = got.output.splitlines()
    verdicts = [x for x in lines if x.startswith("verdict: ")]
    assert len(verdicts) == 1  # one line, however narrow the terminal
    assert verdicts[0].startswith("verdict: use ") and "m3" in verdicts[0]
    assert "chosen on smoothed outcomes" in got.output
    assert any(x.startswith("rule family: confidence (learned families not tried") for x in lines)
    assert CascadeSpec.load(out).metadata["verdict"] == verdicts[0].removeprefix("verdict: ")


def test_cli_learned_always_trains_them_and_bad_values_fail(tmp_path: Path) -> None:
    log: ReplayLog = synthetic_log(200)
    path = _write_jsonl(log, tmp_path / "syn.jsonl")
    out = tmp_path / "c.yaml"
    args = ["calibrate", str(path), "-o", str(out), "--min-quality", "top*0.95", "--folds", "2"]
    got = CliRunner().invoke(app, [*args, "--learned", "always"], env={"COLUMNS": "200"})
    assert got.exit_code == 0, got.output
    assert "routing" in got.output and "learned families trained (--learned always" in got.output
    bad = CliRunner().invoke(app, [*args, "--learned", "sometimes"])
    assert isinstance(bad.exception, ConfigError) and "'learned' parameter" in str(bad.exception)
