"""A confidence sequence for the stream's agreement with the expert: valid at every item.

A fixed-sample interval (Wilson, Clopper–Pearson) covers the truth with 95% probability
*at one pre-chosen moment*. Looked at after every batch, as a controller does, it misses
the truth at some moment far more often. A *confidence sequence* is a sequence of
intervals that covers the running truth at every moment at once, with probability at
least ``1 - delta``, however often it is looked at and whatever is decided from it.

**What is bounded.** With the definitions of :mod:`tiered.online.audit`, the output of
``n`` items disagrees with the expert only on unaudited cheap answers, so

    agreement_n = 1 - (T_n - K_n) / n,

where ``T_n`` counts the cheap answers so far that disagree with the expert (audited or
not) and ``K_n`` the audits that found a disagreement. ``K_n`` is known; ``T_n`` is not.

**Why the audits pin ``T_n`` down.** Each cheap answer is audited by a coin of known
probability ``a`` (``audit_rate``), drawn independently of the item and of everything
before it. So the coins of the *disagreeing* cheap answers, in stream order, are i.i.d.
Bernoulli(``a``) draws, whatever the stream, its drift, the cheap stages' learning or the
controller do: after ``t`` disagreements, ``S_t`` of them audited is a Bernoulli(``a``)
random walk, and ``K_n = S_{T_n}``. For this walk the mixture likelihood ratio

    L_t(s) = ∫ (p / a)^s ((1 - p) / (1 - a))^(t - s) dπ(p)

with a beta prior ``π`` restricted to ``p < a`` is a nonnegative martingale with mean 1,
so by Ville's inequality it stays below ``1/delta`` at *every* ``t`` with probability at
least ``1 - delta``. On that event ``T_n`` lies in ``{t : L_t(K_n) < 1/delta}`` at every
``n``; ``L_t`` grows with ``t``, so the set's upper end is a bound on ``T_n`` valid at
every item at once (the one-sided beta-binomial mixture of Howard et al., 2021). The
mirror-image prior (``p > a``) gives a lower bound. Each bound holds with probability
at least ``1 - delta`` on its own; the agreement's lower bound is what a target needs.

Assumptions: the audit coin has the same probability ``a`` for every cheap answer (no
cap on expert calls dropping audits) and the expert answers every audit.

Why one ``a`` for all: auditing low-confidence answers more often (with known
probabilities) also gives a valid sequence, but a looser one. A bound that holds
whatever the items do must allow the unseen disagreements to sit among the rarely
audited answers, where each is weak evidence (a hidden disagreement at audit
probability ``a_i`` moves a bet by about ``a_i``). With the confidence profiles of the
HEADLINES and Rotten Tomatoes cascades and the same number of audits, such a bound
was 3 to 7 times wider above the truth than this one. Nothing is
assumed about the items: they may drift, and the cheap stages may change as they learn.

The prior is an even mix of two beta priors centred on ``a`` (``PRIOR_STRENGTHS``): a
weak one, tight when the audits find few disagreements, and a strong one, tight from
some tens of them (a 10k-item stream at 5% audits finds 20–50). Against a fixed-sample
one-sided bound, the price of validity at every item is about 1.7 times the width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc, betaincc, betaln

# Prior strengths ρ of the Beta(ρa, ρ(1 - a)) mixture components (see the docstring).
PRIOR_STRENGTHS = (4.0, 64.0)


@dataclass(frozen=True, slots=True)
class AgreementBounds:
    """Bounds on the overall agreement of ``n`` items, valid at every item at once.

    ``low`` holds with probability >= ``1 - delta`` at every moment of the stream, and so
    does ``high`` (separately). ``disagreements_low``/``_high`` bound ``T_n``, the cheap
    answers that disagree with the expert (audited ones included).
    """

    n: int
    low: float
    high: float
    disagreements_low: int
    disagreements_high: int
    delta: float


def _log_mixture(t: np.ndarray, s: int, a: float, upper: bool) -> np.ndarray:
    """log L_t(s) for each ``t``: the prior restricted to ``p < a`` (``upper=False``, for
    the upper bound on ``T``) or to ``p > a`` (for the lower bound)."""
    part = betaincc if upper else betainc
    out = []
    for rho in PRIOR_STRENGTHS:
        al, be = rho * a, rho * (1.0 - a)
        x, y = s + al, t - s + be
        with np.errstate(divide="ignore"):  # a posterior far outside the prior's side: L = 0
            num = betaln(x, y) + np.log(part(x, y, a))
        den = betaln(al, be) + math.log(part(al, be, a))
        out.append(num - den - s * math.log(a) - (t - s) * math.log1p(-a))
    mixed = np.logaddexp.reduce(np.stack(out), axis=0) - math.log(len(PRIOR_STRENGTHS))
    return np.asarray(mixed, dtype=float)


def _first_true(lo: int, hi: int, test: Callable[[int], bool]) -> int:
    """Smallest integer ``t`` in ``[lo, hi]`` with ``test(t)`` (monotone), else ``hi + 1``."""
    if not test(hi):
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if test(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check(k: int, c: int, delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta}")
    if k < 0 or c < 0:
        raise ValueError(f"counts must be >= 0; got K={k}, unaudited cheap={c}")


def disagreement_upper(
    audited_disagreements: int, unaudited_cheap: int, audit_rate: float, delta: float
) -> int:
    """Upper bound on ``T`` (see the module docstring) given ``K`` audited disagreements;
    ``T - K`` cannot exceed the unaudited cheap answers."""
    k, c = int(audited_disagreements), int(unaudited_cheap)
    _check(k, c, delta)
    if audit_rate >= 1.0 or c == 0:
        return k  # every cheap answer was audited, or none is left unaudited
    if audit_rate <= 0.0:
        return k + c  # no audits: nothing is known
    bar = math.log(1.0 / delta)

    def rejected(t: int) -> bool:
        return bool(_log_mixture(np.array([float(t)]), k, audit_rate, False)[0] >= bar)

    # L grows with t under the p < a prior: the bound is the last t not rejected
    return min(_first_true(k, k + c, rejected) - 1, k + c)


def disagreement_lower(
    audited_disagreements: int, unaudited_cheap: int, audit_rate: float, delta: float
) -> int:
    """Lower bound on ``T`` given ``K`` audited disagreements (at least ``K``)."""
    k, c = int(audited_disagreements), int(unaudited_cheap)
    _check(k, c, delta)
    if audit_rate >= 1.0 or audit_rate <= 0.0 or c == 0:
        return k
    bar = math.log(1.0 / delta)

    def kept(t: int) -> bool:
        return bool(_log_mixture(np.array([float(t)]), k, audit_rate, True)[0] < bar)

    # under the p > a prior L falls with t: the bound is the first t kept
    return min(_first_true(k, k + c, kept), k + c)


def disagreement_bounds(
    audited_disagreements: int, unaudited_cheap: int, audit_rate: float, delta: float
) -> tuple[int, int]:
    """``(T_low, T_high)``: both ends of the sequence for ``T`` (each at level ``delta``)."""
    args = (audited_disagreements, unaudited_cheap, audit_rate, delta)
    low, high = disagreement_lower(*args), disagreement_upper(*args)
    return low, max(high, low)


def bound_inflation(
    audited_disagreements: int, audit_rate: float, delta: float, ahead: float = 1.0
) -> float:
    """How much the upper bound on the unaudited disagreements grows per disagreement
    expected to come (at least 1): one more audited disagreement stands for ``(1 - a) / a``
    unaudited ones on average, and moves the bound by this factor times as many. A
    controller holding the *bound* at a target must ask the coming items for this much
    less disagreement than holding the estimate would.

    ``ahead``: the audited disagreements expected over the span the controller plans
    for. The bound's excess over the estimate grows like the square root of the audited
    disagreements, so its growth per disagreement falls as they come: the average over
    the span (a secant), not the growth at the next one (a tangent), is what the span
    will see."""
    a = float(audit_rate)
    if not 0.0 < a < 1.0:
        return 1.0
    k = int(audited_disagreements)
    span = max(1, round(ahead))
    unlimited = 10**9
    before = disagreement_upper(k, unlimited, a, delta)
    step = (disagreement_upper(k + span, unlimited, a, delta) - before) / span
    return max(1.0, (step - 1) / ((1.0 - a) / a))


def agreement_bounds(
    n: int,
    cheap_answered: int,
    audits: int,
    audits_agreeing: int,
    audit_rate: float,
    delta: float,
) -> AgreementBounds:
    """The confidence sequence at ``n`` items, from the counts of
    :class:`~tiered.online.audit.AgreementEstimate`: ``cheap_answered`` unaudited cheap
    outputs, and ``audits_agreeing`` of ``audits`` audits that found agreement."""
    k = audits - audits_agreeing
    if n <= 0:
        return AgreementBounds(0, 0.0, 1.0, k, k, delta)
    t_low, t_high = disagreement_bounds(k, cheap_answered, audit_rate, delta)
    return AgreementBounds(
        n=n,
        low=1.0 - (t_high - k) / n,
        high=1.0 - (t_low - k) / n,
        disagreements_low=t_low,
        disagreements_high=t_high,
        delta=delta,
    )


__all__ = [
    "PRIOR_STRENGTHS",
    "AgreementBounds",
    "agreement_bounds",
    "bound_inflation",
    "disagreement_bounds",
    "disagreement_lower",
    "disagreement_upper",
]
