"""Certified batch labelling: the target holds over the whole dataset in at least
``1 - delta`` of runs, for accuracy and for one class's precision and recall, while the
oracle is asked about far fewer items than all of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiered.calibrate.certify_labels import certify_labels, wor_upper_bound
from tiered.errors import ConfigError

DELTA = 0.05
RUNS = 500
MARGIN = 3 * math.sqrt(DELTA * (1 - DELTA) / RUNS)


def _dataset(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary labels; the cheap label is right with probability rising with its score."""
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    truth = rng.integers(0, 2, n).astype(str)
    right = rng.random(n) < 0.55 + 0.45 * score
    cheap = np.where(right, truth, np.where(truth == "0", "1", "0"))
    return cheap, score, truth


class _Oracle:
    """The truth column; counts how often each item is asked about."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.asked = np.zeros(len(truth), dtype=int)

    def __call__(self, idx: np.ndarray) -> list[str]:
        self.asked[idx] += 1
        return [str(x) for x in self.truth[idx]]


def test_the_bound_covers_the_errors_at_every_draw() -> None:
    rng = np.random.default_rng(1)
    n, errors, missed = 400, 60, 0
    population = np.r_[np.ones(errors, dtype=bool), np.zeros(n - errors, dtype=bool)]
    for _ in range(300):
        draws = rng.permutation(population)
        found = np.cumsum(draws)
        if any(
            wor_upper_bound(n, s, int(found[s - 1]), DELTA, (1.0, 1.0)) < errors
            for s in range(5, n, 5)
        ):
            missed += 1
    assert missed / 300 <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 300)
    # and it is informative: after 200 draws it is far below the trivial n - (s - x)
    x = int(np.cumsum(rng.permutation(population))[199])
    assert wor_upper_bound(n, 200, x, DELTA, (1.0, 1.0)) < 2 * errors


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_accuracy_meets_the_target_in_at_least_1_minus_delta_of_runs(target: float) -> None:
    cheap, score, truth = _dataset()
    missed, calls = 0, []
    for seed in range(RUNS):
        oracle = _Oracle(truth)
        res = certify_labels(cheap, score, oracle, target=target, confidence=1 - DELTA, seed=seed)
        assert oracle.asked.max() <= 1  # each item is asked about once at most
        assert np.array_equal(res.oracle_called, oracle.asked > 0)
        missed += np.mean(np.array(res.labels) == truth) < target
        calls.append(res.oracle_calls)
    assert missed / RUNS <= DELTA + MARGIN
    # it spends the oracle where needed: well below labelling everything
    assert np.mean(calls) < {0.9: 0.7, 0.95: 0.9}[target] * len(truth)


def test_a_plug_in_estimate_misses_the_target_far_more_often() -> None:
    # the test above has teeth: cutting where a sample's error *estimate* reaches the
    # budget (no confidence bound) misses the target in many runs
    cheap, score, truth = _dataset()
    n, target = len(truth), 0.9
    order = np.argsort(-score)
    wrong = (cheap != truth)[order]
    rng = np.random.default_rng(0)
    missed = 0
    for _ in range(RUNS):
        sample = rng.random(n) < 0.2
        est = np.cumsum(np.where(sample, wrong, 0)) / 0.2
        k = int(np.flatnonzero(est <= (1 - target) * n).max()) + 1
        out_errors = int((wrong[:k] & ~sample[:k]).sum())
        missed += out_errors > (1 - target) * n
    assert missed / RUNS > 3 * DELTA


@pytest.mark.parametrize("metric", ["precision", "recall"])
def test_one_class_precision_and_recall_hold(metric: str) -> None:
    cheap, score, truth = _dataset(seed=2)
    positive, target, missed, calls = "1", 0.9, 0, []
    for seed in range(200):
        res = certify_labels(
            cheap, score, _Oracle(truth), target=target, metric=metric,  # type: ignore[arg-type]
            positive=positive, seed=seed,
        )  # fmt: skip
        out = np.array(res.labels)
        tp = np.sum((out == positive) & (truth == positive))
        value = (
            tp / max(np.sum(out == positive), 1)
            if metric == "precision"
            else tp / np.sum(truth == positive)
        )
        missed += value < target
        calls.append(res.oracle_calls)
    assert missed / 200 <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 200)
    assert np.mean(calls) < 0.8 * len(truth)


def test_what_is_kept_and_said() -> None:
    cheap, score, truth = _dataset(n=2000, seed=3)
    res = certify_labels(cheap, score, _Oracle(truth), target=0.9, confidence=0.9)
    out = np.array(res.labels)
    assert np.array_equal(out[res.kept], cheap[res.kept])
    assert np.array_equal(out[~res.kept], truth[~res.kept])
    assert not (res.kept & res.oracle_called).any()
    assert res.certified and res.error_bound <= res.allowed == 200
    assert res.statement().startswith("accuracy >= 0.9 with 90% confidence over all 2,000")
    # a perfect cheap stage still needs a few checks, never all of them
    perfect = certify_labels(truth, score, _Oracle(truth), target=0.9)
    assert perfect.oracle_calls < 0.3 * len(truth)


def test_bad_parameters_are_clear_errors() -> None:
    cheap, score, truth = _dataset(n=50)
    with pytest.raises(ConfigError, match="'target' parameter"):
        certify_labels(cheap, score, _Oracle(truth), target=1.5)
    with pytest.raises(ConfigError, match="one score per item"):
        certify_labels(cheap, score[:10], _Oracle(truth), target=0.9)
    with pytest.raises(ConfigError, match="needs the class"):
        certify_labels(cheap, score, _Oracle(truth), target=0.9, metric="recall")


def test_no_cheap_label_certifies_nothing() -> None:
    """A cheap stage that labels nothing keeps nothing and claims no certificate."""
    out = certify_labels(
        [None] * 50, np.zeros(50), lambda idx: ["a"] * len(idx), target=0.9, confidence=0.95
    )
    assert not out.certified
    assert out.oracle_calls == 50
    assert out.labels == ["a"] * 50
