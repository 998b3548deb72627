"""The agreement's confidence sequence: it covers the running truth at every item, the
default controller holds its lower end, and the alarm fires when its upper end falls
below the target.

The coverage checks simulate 500 streams at once with numpy (the bounds depend on the
audited disagreements alone, so they are tabulated once and indexed per item).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest

from tiered.core import AnswerBatch, FixedCost, Item, ModelTags, Stage
from tiered.models.label_column import LabelColumn
from tiered.online import OnlineCascade, OnlineConfig, OnlineDecision
from tiered.online.confseq import (
    agreement_bounds,
    bound_inflation,
    disagreement_lower,
    disagreement_upper,
)
from tiered.online.intervals import wilson_interval

DELTA = 0.05
STREAMS = 500
# three binomial standard errors of a frequency near DELTA over 500 streams
MARGIN = 3 * np.sqrt(DELTA * (1 - DELTA) / STREAMS)


def _simulate(n: int, audit_rate: float, seed: int) -> dict[str, np.ndarray]:
    """Cumulative counts per item of ``STREAMS`` drifting streams: the cheap stages answer
    more and more items, and at a random moment they break (disagree far more often)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[None, :]
    accept_p = 0.3 + 0.6 * t / n
    broken = t >= rng.integers(n // 4, 3 * n // 4, size=(STREAMS, 1))
    wrong_p = np.where(broken, 0.25, 0.03)
    cheap = rng.random((STREAMS, n)) < accept_p
    wrong = cheap & (rng.random((STREAMS, n)) < wrong_p)
    audited = cheap & (rng.random((STREAMS, n)) < audit_rate)
    return {
        "n": np.broadcast_to(t + 1, (STREAMS, n)),
        "unaudited": np.cumsum(cheap & ~audited, axis=1),
        "audits": np.cumsum(audited, axis=1),
        "k": np.cumsum(audited & wrong, axis=1),
        "hidden": np.cumsum(wrong & ~audited, axis=1),  # wrong outputs: the truth
    }


def _bounds(c: dict[str, np.ndarray], audit_rate: float) -> tuple[np.ndarray, np.ndarray]:
    k, cap, n = c["k"], c["k"] + c["unaudited"], c["n"]
    kmax = int(k.max())
    up = np.array([disagreement_upper(j, 10**9, audit_rate, DELTA) for j in range(kmax + 1)])
    lo = np.array([disagreement_lower(j, 10**9, audit_rate, DELTA) for j in range(kmax + 1)])
    low = 1.0 - (np.minimum(up[k], cap) - k) / n
    high = 1.0 - (np.minimum(lo[k], cap) - k) / n
    return low, high


@pytest.mark.parametrize("audit_rate", [0.05, 0.1])
def test_the_sequence_covers_the_running_truth_at_every_item(audit_rate: float) -> None:
    c = _simulate(3000, audit_rate, seed=int(audit_rate * 100))
    truth = 1.0 - c["hidden"] / c["n"]
    low, high = _bounds(c, audit_rate)
    missed_low = (truth < low - 1e-12).any(axis=1).mean()
    missed_high = (truth > high + 1e-12).any(axis=1).mean()
    assert missed_low <= DELTA + MARGIN
    assert missed_high <= DELTA + MARGIN
    # and it says something: far above what the expert's own outputs alone guarantee
    trivial = 1.0 - c["unaudited"][:, -1] / c["n"][:, -1]
    assert np.median(low[:, -1] - trivial) > 0.3


def test_a_fixed_sample_interval_looked_at_every_item_misses_far_more_often() -> None:
    # what the sequence replaces: a 95% Wilson interval on the audited rate, checked after
    # every item, misses the running truth at some moment in many more streams
    c = _simulate(3000, 0.05, seed=5)
    truth = 1.0 - c["hidden"] / c["n"]
    cols = range(99, 3000, 100)
    missed = np.zeros(STREAMS, dtype=bool)
    for s in range(STREAMS):
        for j in cols:
            m, k = int(c["audits"][s, j]), int(c["k"][s, j])
            lo, hi = wilson_interval(m - k, m, 0.95)
            n, u = j + 1, int(c["unaudited"][s, j])
            expert = n - u
            if not (expert + u * lo) / n - 1e-12 <= truth[s, j] <= (expert + u * hi) / n + 1e-12:
                missed[s] = True
                break
    low, high = _bounds(c, 0.05)
    cs_missed = ((truth < low - 1e-12) | (truth > high + 1e-12)).any(axis=1)
    assert missed.mean() > 2 * DELTA
    assert missed.mean() > 3 * cs_missed.mean()


def test_agreement_bounds_match_the_disagreement_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(100, 20000))
        cheap = int(rng.integers(0, n))
        audits = int(rng.integers(0, 200))
        agreeing = int(rng.integers(0, audits + 1))
        b = agreement_bounds(n, cheap, audits, agreeing, 0.05, DELTA)
        k = audits - agreeing
        assert b.low == pytest.approx(1 - (disagreement_upper(k, cheap, 0.05, DELTA) - k) / n)
        assert b.high == pytest.approx(1 - (disagreement_lower(k, cheap, 0.05, DELTA) - k) / n)
        assert 0.0 <= b.low <= b.high <= 1.0


def test_edge_cases_say_what_is_known() -> None:
    # no audits at all: only the expert's own outputs are sure to agree
    b = agreement_bounds(1000, 300, 0, 0, 0.0, DELTA)
    assert b.low == pytest.approx(0.7) and b.high == 1.0
    # every cheap answer audited: nothing unaudited is left to doubt
    b = agreement_bounds(1000, 0, 300, 280, 1.0, DELTA)
    assert (b.low, b.high) == (1.0, 1.0)
    assert agreement_bounds(0, 0, 0, 0, 0.05, DELTA).low == 0.0
    with pytest.raises(ValueError, match="delta"):
        disagreement_upper(0, 10, 0.05, 1.5)
    # a bound grows by more than one per coming disagreement, less so as audits pile up
    g = [bound_inflation(k, 0.05, DELTA) for k in (0, 5, 20, 100)]
    assert g[0] > g[1] > g[2] > g[3] >= 1.0


def test_planning_ahead_uses_the_bounds_growth_over_the_span() -> None:
    # the bound's excess over the estimate grows like a square root: per disagreement it
    # grows less over a span of them than at the next one, and never by less than one
    def up(k: int) -> int:
        return disagreement_upper(k, 10**9, 0.1, DELTA)

    for k in (0, 5, 20, 100):
        tangent = bound_inflation(k, 0.1, DELTA)
        assert bound_inflation(k, 0.1, DELTA, ahead=1) == tangent
        assert 1.0 <= bound_inflation(k, 0.1, DELTA, ahead=30) < tangent
    expected = ((up(50) - up(20)) / 30 - 1) / 9
    assert bound_inflation(20, 0.1, DELTA, ahead=30) == pytest.approx(expected)
    # a span of less than one disagreement is the next one
    assert bound_inflation(20, 0.1, DELTA, ahead=0.2) == bound_inflation(20, 0.1, DELTA)


# ------------------------------------------------------------------ the controller


class _Guesser:
    """A cheap stage that reads its label and confidence from the item."""

    tags = ModelTags(gives_probabilities=True)
    name = "guess"

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        labels = [str(it.fields["guess"]) for it in items]
        conf = np.array([float(it.fields["conf"]) for it in items])
        first = np.array([x == "a" for x in labels])
        probs = np.stack([np.where(first, conf, 1 - conf), np.where(first, 1 - conf, conf)], 1)
        return AnswerBatch.from_labels(labels, probs=probs, classes=("a", "b"))


def _stream(n: int, seed: int, broken_from: int | None = None) -> list[Item]:
    """Labels a/b; the guess is right with probability ``conf`` until ``broken_from``,
    then always wrong, still confident."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    conf = rng.uniform(0.99, 1.0, n) if broken_from is not None else rng.uniform(0.6, 1.0, n)
    right = rng.random(n) < conf
    if broken_from is not None:
        right[broken_from:] = False
    guess = np.where(right, y, 1 - y)
    return [
        Item(id=str(i), input="", fields={"label": "ab"[y[i]], "guess": "ab"[guess[i]],
             "conf": float(conf[i])})
        for i in range(n)
    ]  # fmt: skip


def _run(
    items: list[Item], cfg: OnlineConfig, seed: int
) -> tuple[OnlineCascade, list[OnlineDecision]]:
    oc = OnlineCascade(
        [Stage("guess", _Guesser())],
        Stage("expert", LabelColumn("label"), cost=FixedCost(usd_per_call=1.0)),
        cfg,
        seed=seed,
    )
    out = []
    for i in range(0, len(items), cfg.batch_size):
        out.extend(oc.process(items[i : i + cfg.batch_size]))
    return oc, out


def test_the_default_controller_holds_the_lower_bound_and_the_truth() -> None:
    assert OnlineConfig().control == "anytime"
    items = _stream(6000, seed=3)
    oc, out = _run(items, OnlineConfig(target_agreement=0.9, warmup=100), seed=3)
    st = oc.stats()
    truth = np.mean([d.label == it.fields["label"] for d, it in zip(out, items, strict=True)])
    assert truth >= 0.9
    assert st.cs_low <= truth <= st.cs_high
    assert st.cs_low > 0.87  # held near the target (softly: it closes in from below)
    assert st.expert_share < 0.7  # while the cheap stage still answers much of the stream
    assert st.alarms == 0 and not st.below_target


def test_the_alarm_fires_soon_after_a_break_and_escalates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, fired, target = 400, 0, 0.85
    cfg = OnlineConfig(target_agreement=target, warmup=100, audit_rate=0.1)
    for seed in range(6):
        items = _stream(2400, seed=seed, broken_from=broken)
        with caplog.at_level(logging.WARNING, logger="tiered.online"):
            oc, out = _run(items, cfg, seed=seed)
        right = np.array([d.label == it.fields["label"] for d, it in zip(out, items, strict=True)])
        running = np.cumsum(right) / np.arange(1, len(right) + 1)
        st = oc.stats()
        if running[broken : broken + 400].min() < target - 0.1:  # far below target
            fired += 1
            assert st.alarms >= 1 and st.first_alarm_at is not None
            assert st.first_alarm_at <= broken + 500
            # escalated: from the next batch on, every item went to the expert until the
            # bound recovered
            start = st.first_alarm_at
            stop = next(
                (h["n"] for h in oc.history if h["n"] > start and not h["below_target"]),
                len(out),
            )
            assert all(d.stage == "expert" for d in out[start:stop])
        elif running[200:].min() >= target:
            assert st.alarms == 0  # no false alarm when the controller coped by itself
    assert fired >= 3
    assert "agreement below target" in caplog.text


def test_no_alarm_on_a_steady_stream() -> None:
    for seed in range(3):
        oc, _ = _run(_stream(3000, seed=seed), OnlineConfig(target_agreement=0.9), seed=seed)
        assert oc.stats().alarms == 0
