"""Certified calibration: the promise holds over resampled logs, and it is stated.

The validity check replays the certification procedure (fit part orders threshold
cascades, certification part tests them in that order) on 500 logs resampled from one
synthetic population at once with numpy; the population's own quality is the truth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tiered.calibrate import SearchSettings
from tiered.calibrate.certify import CertifySession, RowTest, certify, fixed_sequence
from tiered.calibrate.certify_stats import betting_pvalue, binomial_pvalue, rows_needed
from tiered.calibrate.families import ThresholdFamily
from tiered.calibrate.objective import Objective, parse_min_quality
from tiered.core.spec import CascadeSpec
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog
from tiered.replay.synthetic import write_synthetic_log
from tiered.replay.view import LogView

DELTA = 0.05
LOGS = 500
MARGIN = 3 * math.sqrt(DELTA * (1 - DELTA) / LOGS)


def _population(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A cheap model whose correctness its confidence predicts, and a better, pricier one."""
    rng = np.random.default_rng(seed)
    ease = rng.standard_normal(n)
    return {
        "cheap": (rng.random(n) < 1 / (1 + np.exp(-(2.5 * ease + 0.5)))).astype(float),
        "top": (rng.random(n) < 0.85).astype(float),
        "conf": ease + 0.6 * rng.standard_normal(n),
    }


def _cascades(p: dict[str, np.ndarray], rows: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Quality ``(len(taus), len(rows))`` of "cheap if conf >= tau, else top"."""
    take = p["conf"][rows][None, :] >= taus[:, None]
    return np.asarray(np.where(take, p["cheap"][rows][None, :], p["top"][rows][None, :]))


@pytest.mark.parametrize("target", ["top-0.02", "top*0.95", "0.8"])
def test_certified_choice_violates_the_promise_at_most_delta_of_the_time(target: str) -> None:
    pop = _population(40_000)
    n_pop = len(pop["top"])
    taus = np.quantile(pop["conf"], np.linspace(0.0, 0.95, 40))
    q = parse_min_quality(target)
    test = RowTest.of(q, 0.005, binary=True)
    truth = _cascades(pop, np.arange(n_pop), taus)
    true_stat = test.rows(truth, pop["top"][None, :]).mean(axis=1)  # per cascade
    rng = np.random.default_rng(7)
    certified_bad = naive_bad = 0
    for _ in range(LOGS):
        rows = rng.choice(n_pop, 600)  # a log drawn from the population
        cert = rows[180:]  # the first 180 rows fit, the rest certify
        # the fitting part's cost order is the threshold order here (a higher tau sends
        # more rows to the top model): most expensive, highest tau, first
        order = np.argsort(-taus)
        cert_q = _cascades(pop, cert, taus)
        xs = (test.rows(cert_q[j], pop["top"][cert]) for j in order)
        passed = fixed_sequence(xs, test, DELTA)
        if passed and true_stat[order[len(passed) - 1]] < test.mu0:
            certified_bad += 1
        # uncertified: the cheapest cascade whose statistic on the whole log meets the target
        whole = test.rows(_cascades(pop, rows, taus), pop["top"][rows][None, :]).mean(axis=1)
        ok = np.flatnonzero(whole >= test.mu0)
        if ok.size and true_stat[ok.min()] < test.mu0:
            naive_bad += 1
    assert certified_bad / LOGS <= DELTA + MARGIN
    assert naive_bad / LOGS > 3 * DELTA  # the test has teeth: without certificates it fails


def test_binomial_pvalue_is_the_exact_tail() -> None:
    for k, m, p in [(90, 100, 0.85), (3, 10, 0.5), (0, 10, 0.2), (50, 50, 0.9)]:
        tail = sum(math.comb(m, j) * p**j * (1 - p) ** (m - j) for j in range(k, m + 1))
        assert binomial_pvalue(k, m, p) == pytest.approx(tail, abs=1e-12)


def test_betting_pvalue_is_valid_under_the_null_and_adapts_to_variance() -> None:
    rng = np.random.default_rng(0)
    # a paired difference whose mean sits exactly on the null's boundary, -0.01
    draws = rng.choice([-1.0, 0.0, 1.0], size=(1000, 300), p=[0.05, 0.91, 0.04])
    rejected = np.mean([betting_pvalue(x, -0.01, -1.0, 1.0) <= DELTA for x in draws])
    assert rejected <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 1000)
    # the same mean shift is certified on fewer rows when the rows rarely differ
    calm = np.r_[np.zeros(980), np.ones(20)]
    noisy = np.r_[np.zeros(800), np.ones(110), -np.ones(90)]
    assert rows_needed(calm, -0.005, -1.0, DELTA) < rows_needed(noisy, -0.005, -1.0, DELTA) / 3
    # and rows_needed is where the p-value crosses delta
    need = int(rows_needed(calm, -0.005, -1.0, DELTA))

    def scale(m: int) -> np.ndarray:  # m rows drawn like ``calm``
        return np.r_[np.zeros(m - m // 50), np.ones(m // 50)]

    assert betting_pvalue(scale(need + 50), -0.005, -1.0, 1.0) <= DELTA
    assert betting_pvalue(scale(need // 2), -0.005, -1.0, 1.0) > DELTA


def _replay_log(
    quality: np.ndarray, prices: list[float], logprob: np.ndarray, seed: int
) -> ReplayLog:
    """A log of the given 0/1 qualities (a column per model, named by ``_MODELS``), the
    first model's log-prob as its only signal."""
    n, m = quality.shape
    gold = np.random.default_rng(seed).integers(0, 4, n)
    answers = np.where(quality > 0, gold[:, None], (gold[:, None] + 1) % 4).astype(str)
    signal = np.full((n, m), np.nan)
    signal[:, 0] = logprob
    return ReplayLog(
        ids=[f"q{i}" for i in range(n)],
        models=list(_MODELS[m]),
        present=np.ones((n, m), dtype=bool),
        quality=quality,
        cost=np.tile(prices, (n, 1)),
        latency_ms=np.full((n, m), 1.0),
        answers=np.asarray(answers, dtype=object),
        signals={"logprob": signal},
        samples=None,
        tasks=["t"] * n,
        inputs=[f"q{i}" for i in range(n)],
        references=[None] * n,
        path="made-in-test.jsonl",
    )


_MODELS = {2: ("cheap", "top"), 3: ("cheap", "a", "b")}


def _log(n: int, seed: int = 0) -> ReplayLog:
    pop = _population(n, seed)
    quality = np.stack([pop["cheap"], pop["top"]], axis=1)
    return _replay_log(quality, [1e-6, 1e-4], -np.log1p(np.exp(-pop["conf"])), seed)


FAST = SearchSettings(max_stages=2, never_moves=False, refine_rounds=1)


def _families(view: object) -> list[ThresholdFamily]:
    return [ThresholdFamily("logprob", "above")]


def test_a_large_log_certifies_a_cheaper_cascade_and_says_so(tmp_path: Path) -> None:
    cal = certify(_log(6000), "top-0.02", confidence=0.95, settings=FAST, families=_families)
    cert = cal.certificate
    assert cert is not None and cert.certified and not cert.fallback
    assert cal.chosen.stages == ["cheap", "top"] and cal.relative_cost < 0.9
    assert cert.rows_fit + cert.rows_certify == 6000 and cert.reference_model == "top"
    assert cert.models_compared == 2
    assert cert.statement() == (
        "quality >= quality of the best model - 0.02 - 0.005 with 95% confidence (paired "
        "with each of the log's 2 models on the same rows; the best on this log: top), "
        f"certified on {cert.rows_certify:,} rows"
    )
    # the estimate on the certification rows clears the promised bound
    assert cert.estimate > cert.bound and cert.p_value is not None and cert.p_value <= 0.05
    path = cal.save(tmp_path / "cascade.yaml")
    md = CascadeSpec.load(path).metadata["certificate"]
    assert md["statement"] == cert.statement() and md["confidence"] == 0.95


def test_a_small_log_falls_back_to_the_top_model_and_says_how_many_rows_would_do() -> None:
    cal = certify(_log(300), "top", confidence=0.95, settings=FAST, families=_families)
    cert = cal.certificate
    assert cert is not None and cert.fallback and cert.certified  # top meets "top" itself
    assert cal.chosen.stages == ["top"]
    assert "top alone is the answer" in cert.statement()
    assert cert.rows_needed is not None and cert.rows_needed > 300


def _tied_log(n: int, seed: int) -> ReplayLog:
    """``a`` and ``b`` (four times dearer) right on the same rows but for a few: ``a`` on one
    row more of the whole log, while a part of it may favour ``b``."""
    pop = _population(n, seed)
    rng = np.random.default_rng(seed + 1)
    a = pop["top"].copy()
    b = a.copy()
    k = n // 60
    b[rng.choice(np.flatnonzero(a == 1), k + 1, replace=False)] = 0
    b[rng.choice(np.flatnonzero(a == 0), k, replace=False)] = 1
    quality = np.stack([pop["cheap"], a, b], axis=1)
    return _replay_log(quality, [1e-6, 1e-4, 4e-4], -np.log1p(np.exp(-pop["conf"])), seed + 1)


def test_a_relative_target_is_promised_against_every_model_not_the_fitting_part_best() -> None:
    log = _tied_log(600, seed=0)
    session = CertifySession(LogView.of(log), confidence=0.95, settings=FAST, families=_families)
    assert session.view.models[session.top] == "b"  # the fitting rows favour the dearer twin
    cal = session.decide(Objective.make("top-0.01"))
    cert = cal.certificate
    assert cert is not None and cert.reference_model == "a" and cert.models_compared == 3
    assert cal.chosen.stages[-1] != "b"  # nothing falls back to (or ends in) the dearer twin
    assert cal.top_model == "a" and cal.relative_cost <= 1.0 + 1e-9
    assert "quality of the best model - 0.01 - 0.005" in cert.statement()


def test_against_every_model_the_p_value_is_the_largest_of_the_paired_ones() -> None:
    test = RowTest.of(parse_min_quality("top-0.01"), 0.005, binary=True)
    rng = np.random.default_rng(3)
    cascade = (rng.random(400) < 0.8).astype(float)
    models = np.stack([(rng.random(400) < p).astype(float) for p in (0.5, 0.8, 0.83)], axis=1)
    x = test.rows_each(cascade, models)
    assert x.shape == (3, 400)
    each = [test.pvalue(test.rows(cascade, models[:, j])) for j in range(3)]
    assert test.pvalue(x) == max(each)
    assert each[0] < 0.05 < max(each)  # far better than one model is not enough


def test_an_unreachable_absolute_target_is_not_certified() -> None:
    cal = certify(_log(400), 0.95, confidence=0.95, settings=FAST, families=_families)
    cert = cal.certificate
    assert cert is not None and not cert.certified
    assert cert.statement().startswith("NOT certified: not even top")


def test_bad_certification_options_are_clear_errors() -> None:
    log = _log(200)
    with pytest.raises(ConfigError, match="'confidence' parameter must be a number in"):
        certify(log, confidence=1.5)
    with pytest.raises(ConfigError, match="'tolerance' parameter"):
        certify(log, confidence=0.9, tolerance=-0.1)
    with pytest.raises(ConfigError, match="'min_quality' parameter"):
        certify(log, "best", confidence=0.9)


def test_cli_calibrate_certifies_and_inspect_shows_the_certificate(tmp_path: Path) -> None:
    from tiered.cli import app

    log = write_synthetic_log(tmp_path / "log.jsonl", 400, seed=3)
    out = tmp_path / "c.yaml"
    runner = CliRunner()
    args = ["calibrate", str(log), "-o", str(out), "--confidence", "0.9", "--max-stages", "2"]
    res = runner.invoke(app, [*args, "--min-quality", "top*0.9"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # the console wraps long lines
    assert "certificate:" in said and "90% confidence" in said
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "certificate: " in shown.output
    bad = runner.invoke(app, [*args, "--budget", "0.001"])
    assert isinstance(bad.exception, ConfigError)
    assert "does not combine with --budget" in str(bad.exception)
    plain = runner.invoke(app, ["calibrate", str(log), "-o", str(out), "--max-stages", "2"])
    assert "not certified" in plain.output
