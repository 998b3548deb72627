"""Cross-validated choice for targets below the best model, and the CV repeat knob."""

from __future__ import annotations

import numpy as np
import pytest

from tiered.calibrate import SearchSettings, calibrate
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog

FAST = SearchSettings(max_stages=3, beam=12, refine_rounds=1)


def dominated_log(n: int = 400, seed: int = 0, right: float = 0.62, extra: int = 8) -> ReplayLog:
    """m0 is cheap and right wherever the pricier m1 is right (and on ``extra`` more rows);
    m2 is the expensive best model, right or wrong independently of the other two."""
    rng = np.random.default_rng(seed)
    q1 = np.zeros(n, dtype=bool)
    q1[rng.choice(n, round(right * n), replace=False)] = True
    q0 = q1.copy()
    q0[rng.choice(np.flatnonzero(~q1), extra, replace=False)] = True
    q2 = rng.random(n) < 0.95
    quality = np.stack([q0, q1, q2], axis=1).astype(float)
    gold = rng.integers(0, 4, n)
    answers = np.where(quality > 0, gold[:, None], (gold[:, None] + 1 + np.arange(3)) % 4)
    return ReplayLog(
        ids=[f"q{i}" for i in range(n)],
        models=["m0", "m1", "m2"],
        present=np.ones((n, 3), dtype=bool),
        quality=quality,
        cost=np.tile([1e-5, 2e-5, 1e-4], (n, 1)),
        latency_ms=np.full((n, 3), 10.0),
        answers=np.asarray(answers.astype(str), dtype=object),
        signals={},
        samples=None,
        tasks=["t"] * n,
        inputs=[f"question {i}" for i in range(n)],
        references=[None] * n,
        path="made-in-test.jsonl",
    )


@pytest.mark.parametrize("seed", [0, 2])
def test_a_dominated_model_is_beaten_by_the_cheaper_better_one(seed: int) -> None:
    # the target is m1's quality; m0 reaches it on every fold at half the price. The
    # held-out doubt is measured against the cheapest model reaching the target (m0 itself),
    # not against the unrelated best model m2 (which made m0 look too risky: the choice
    # went to the dominated m1 or to a cascade through m2)
    log = dominated_log(seed=seed)
    target = float(log.quality[:, 1].mean())
    cal = calibrate(log, min_quality=target, folds=5, settings=FAST)
    assert cal.chosen.stages == ["m0"]
    assert cal.chosen.quality >= target
    assert cal.cv is not None and cal.cv.cost <= float(log.cost[:, 0].mean()) * (1 + 1e-9)


def test_top_target_still_pairs_with_the_best_model() -> None:
    log = dominated_log(seed=1)
    cal = calibrate(log, min_quality="top", folds=5, settings=FAST)
    assert cal.chosen.quality >= float(log.quality.mean(0).max()) - 1e-12
    assert cal.cv is not None and cal.cv.reference_quality is not None


def test_cv_repeats_pool_more_folds() -> None:
    log = dominated_log(seed=2)
    cal = calibrate(log, min_quality="top", folds=4, cv_repeats=2, settings=FAST)
    assert cal.cv is not None and len(cal.cv.per_fold) == 8


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_cv_repeats_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="cv_repeats"):
        calibrate(dominated_log(n=60), min_quality="top", cv_repeats=bad, settings=FAST)  # type: ignore[arg-type]
