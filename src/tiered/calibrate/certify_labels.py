"""Certified batch labelling: label a finite dataset with a cheap stage and an oracle so
that the labels' accuracy against the oracle over the *whole dataset* is at least a
target with probability at least ``confidence``, calling the oracle as little as it can.

The setting of BARGAIN (Zeighami et al., SIGMOD 2026). The cheap stage has labelled every
item with a score; items are ranked by score. A *prefix* of the ranking keeps the cheap
labels, everything after it goes to the oracle, so the output's errors are the cheap
stage's errors inside the prefix. With ``N`` items and target ``T`` at most
``B = floor((1 - T) N)`` errors are allowed.

**Test.** Candidate prefixes lie on a grid fixed in advance, smallest first (a prefix of
at most ``B`` items needs no test). Each is tested by sampling it uniformly without
replacement and asking the oracle: the number of cheap errors ``E`` in a prefix of ``n``
items is bounded by a *confidence sequence for sampling without replacement*, the
prior-posterior ratio of a beta-binomial prior (Waudby-Smith & Ramdas, 2020), one-sided:

    M_s(e) = [sum over e' < e of π(e') L_s(e')] / [π(e' < e) L_s(e)],

where ``L_s(e)`` is the hypergeometric likelihood of the first ``s`` draws. For the true
``E`` this is a nonnegative martingale with mean 1, so by Ville's inequality it stays
below ``1/delta`` at every ``s`` with probability >= ``1 - delta``: the bound
``U = max{e : M_s(e) < 1/delta}`` is valid however long one samples and whenever one
stops. A prefix is certified when ``U <= B``. Prefixes are tested in order and the
procedure stops at the first one it gives up on (fixed-sequence testing): a wrong
certificate needs the first prefix with more than ``B`` errors to pass, which has
probability at most ``delta``.

**Where the calls go.** Every prefix's draws come from one random permutation, restricted
to the prefix (a uniform sample of it), so a larger prefix reuses the smaller ones'
labels: moving on costs only the draws that fall in the new part. After each batch of
draws the rate seen so far predicts how many more draws would certify the prefix; when
that exceeds what certifying it would save (the new part's items, which otherwise go to
the oracle) times ``lookahead``, the procedure stops. Sampled items output the oracle's
label. Compared with BARGAIN: an exact hypergeometric bound where it bets, a fine grid of
prefixes (more are free: the fixed sequence costs no multiplicity correction), and
stopping by cost rather than by sampling until the bound decides either way.

**Precision and recall of one class** (``metric``): for precision of class ``c`` only
items the cheap stage labels ``c`` are ranked; a prefix is certified when its share of
errors is at most ``1 - T`` (sampled and oracle-labelled items only add true ``c``\\ s).
For recall, items the cheap stage labels other than ``c`` are ranked (most confident
first) and a prefix's hidden ``c``\\ s are bounded against a lower bound on the ``c``\\ s the
cheap stage found, each at ``delta / 2``.

Assumptions: the oracle's label is the truth; the scores and cheap labels are fixed
before sampling starts. Nothing is assumed about how good the scores are: bad scores
cost oracle calls, never validity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.special import betaln, gammaln

from tiered.calibrate.certify import check_unit
from tiered.errors import ConfigError

Oracle = Callable[[np.ndarray], Sequence[str | None]]
Metric = Literal["accuracy", "precision", "recall"]


@lru_cache(maxsize=64)
def _tables(n: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log j! for j = 0..n, the log prior of e = 0..n errors, and its running log-sum
    shifted by one (the prior mass below each e): reused for every draw of a prefix."""
    lg = gammaln(np.arange(n + 1, dtype=float) + 1.0)
    e = np.arange(n + 1, dtype=float)
    log_prior = lg[n] - lg - lg[::-1] + betaln(e + a, n - e + b) - betaln(a, b)
    below = np.concatenate(([-np.inf], np.logaddexp.accumulate(log_prior)[:-1]))
    return lg, log_prior, below


def wor_upper_bound(n: int, s: int, x: int, delta: float, prior: tuple[float, float]) -> int:
    """Upper confidence-sequence bound on the errors ``E`` of ``n`` items after ``s``
    draws without replacement found ``x`` errors (see the module docstring)."""
    if s >= n:
        return x
    lg, log_prior, prior_below = _tables(n, float(prior[0]), float(prior[1]))
    e = np.arange(x, n - (s - x) + 1)  # the counts the draws leave possible
    # log-likelihood of the draws' sequence given e errors (up to a constant in e)
    log_l = lg[e] - lg[e - x] + lg[n - e] - lg[n - e - (s - x)]
    joint = log_prior[e] + log_l
    below = np.concatenate(([-np.inf], np.logaddexp.accumulate(joint)[:-1]))
    with np.errstate(invalid="ignore"):
        log_m = below - prior_below[e] - log_l
    kept = ~(log_m >= math.log(1.0 / delta))
    return int(e[np.flatnonzero(kept).max()])


def wor_lower_bound(n: int, s: int, x: int, delta: float, prior: tuple[float, float]) -> int:
    """Lower bound on the *matches* (the complement's errors), by symmetry."""
    return n - wor_upper_bound(n, s, s - x, delta, (prior[1], prior[0]))


@dataclass
class CertifiedLabels:
    """The labels and what was certified.

    - ``labels``: one per item, the cheap label where it was kept, else the oracle's.
    - ``oracle_called``: per item; ``oracle_calls`` their number.
    - ``kept``: per item, the cheap label is the output (unsampled, inside the prefix).
    - ``certified``: a prefix passed; ``error_bound``: the certified bound on the errors
      counted by the metric (wrong labels; false positives; missed positives), and
      ``allowed`` how many the target permits.
    """

    labels: list[str | None]
    oracle_called: np.ndarray
    kept: np.ndarray
    metric: str
    target: float
    confidence: float
    certified: bool
    error_bound: int
    allowed: float
    samples: int
    positive: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def oracle_calls(self) -> int:
        return int(self.oracle_called.sum())

    def statement(self) -> str:
        what = self.metric if self.positive is None else f"{self.metric} of '{self.positive}'"
        n = len(self.labels)
        return (
            f"{what} >= {self.target:g} with {100 * self.confidence:g}% confidence over all "
            f"{n:,} items ({self.oracle_calls:,} oracle calls, {int(self.kept.sum()):,} cheap "
            "labels kept)"
        )


class _Labels:
    """The oracle's labels, asked once per item."""

    def __init__(self, oracle: Oracle, n: int) -> None:
        self.oracle = oracle
        self.asked = np.zeros(n, dtype=bool)
        self.values = np.full(n, None, dtype=object)

    def ask(self, idx: np.ndarray) -> None:
        new = idx[~self.asked[idx]]
        if new.size:
            got = list(self.oracle(new))
            if len(got) != new.size:
                raise ConfigError(
                    f"the oracle returned {len(got)} labels for {new.size} items", field="oracle"
                )
            self.values[new] = np.array(got, dtype=object)
            self.asked[new] = True


@dataclass
class _Prefixes:
    """A ranked population (item indices, best first) and how its errors are judged."""

    ranked: np.ndarray
    wrong: Callable[[np.ndarray], np.ndarray]  # item indices (labelled) -> is an error
    allowed: Callable[[int], float]  # prefix size -> errors it may hold


@dataclass(frozen=True, slots=True)
class _Sampling:
    """How prefixes are sampled: grid points, draws per step, when to give up."""

    grid: int
    batch: int
    lookahead: float
    min_samples: int = 20


def _search(
    pop: _Prefixes,
    labels: _Labels,
    delta: float,
    prior: tuple[float, float],
    rng: np.random.Generator,
    how: _Sampling,
) -> tuple[int, int]:
    """Largest certified prefix size (fixed sequence over the grid) and its error bound."""
    grid, batch, lookahead, min_samples = how.grid, how.batch, how.lookahead, how.min_samples
    n = len(pop.ranked)
    if n == 0:  # no cheap label to keep: nothing to certify
        return 0, 0
    perm = rng.permutation(n)  # perm[j]: the rank drawn j-th
    sizes = sorted({max(1, round(n * (i + 1) / grid)) for i in range(grid)})
    best, bound = 0, 0
    for size in sizes:
        if size <= pop.allowed(size):
            best, bound = size, size  # small enough to hold no more errors than allowed
            continue
        order = perm[perm < size]  # this prefix's draws, in the permutation's order
        # start where the previous prefix's sampling fraction lands: those are labelled
        s = min(size, max(min_samples, math.ceil(_sampled_share(labels, pop, best) * size)))
        passed = False
        while True:
            labels.ask(pop.ranked[order[:s]])
            x = int(pop.wrong(pop.ranked[order[:s]]).sum())
            up = wor_upper_bound(size, s, x, delta, prior)
            if up <= pop.allowed(size):
                best, bound, passed = size, up, True
                break
            if s >= size or _futile(size, s, x, up, pop, labels, best, lookahead):
                break
            s = min(size, s + batch)
        if not passed:
            break
    return best, bound


def _sampled_share(labels: _Labels, pop: _Prefixes, size: int) -> float:
    return float(labels.asked[pop.ranked[:size]].mean()) if size else 0.0


def _futile(
    size: int, s: int, x: int, up: int, pop: _Prefixes, labels: _Labels, best: int,
    lookahead: float,
) -> bool:  # fmt: skip
    """Would certifying this prefix cost more oracle calls than it saves?

    The bound's excess over the estimate shrinks like the sampling error,
    ``sqrt(1/s - 1/size)``; that predicts the draws the bound needs to reach the allowed
    errors, were the rate seen so far to hold.
    """
    if s < 10:
        return False
    rate = (x + 0.5) / (s + 1.0)
    allowed = pop.allowed(size)
    room = allowed - rate * size
    if room <= 0:
        return True  # the prefix most likely holds too many errors
    excess = max(up - rate * size, 1e-9)
    shrink = room / excess  # the factor the excess must shrink by
    spread = 1.0 / s - 1.0 / size
    need = 1.0 / (spread * shrink**2 + 1.0 / size)  # draws at which it would
    saved = float((~labels.asked[pop.ranked[best:size]]).sum())
    # draws still to come inside the part already certified (the new part's draws go to
    # the oracle anyway if this prefix fails)
    return (need - s) * (best / size) > lookahead * saved


def error_budget(target: float, n: int) -> int:
    """The wrong labels an accuracy target ``T`` allows among ``n``: ``floor((1 - T) n)``
    (with room for the float error of ``1 - T``)."""
    return math.floor((1.0 - target) * n + 1e-9)


def certify_labels(
    cheap_labels: Sequence[str | None] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    oracle: Oracle,
    *,
    target: float,
    confidence: float = 0.95,
    metric: Metric = "accuracy",
    positive: str | None = None,
    seed: int = 0,
    grid: int = 100,
    batch: int = 10,
    lookahead: float = 2.0,
    prior: tuple[float, float] = (1.0, 1.0),
) -> CertifiedLabels:
    """Labels for every item with ``metric`` >= ``target`` against the oracle with
    probability >= ``confidence`` (see the module docstring).

    ``oracle(indices)`` returns the oracle's labels of those items (a batch of positions
    into ``cheap_labels``); it is called only for items whose label it has not given.
    ``scores``: higher means the cheap label is more likely right. ``positive``: the class
    whose precision or recall is certified.
    """
    cheap = np.array(list(cheap_labels), dtype=object)
    sc = np.asarray(scores, dtype=float)
    n = len(cheap)
    _check(n, sc, target, confidence, metric, positive, grid, batch)
    delta = 1.0 - confidence
    rng = np.random.default_rng(seed)
    labels = _Labels(oracle, n)
    no_label = np.array([x is None for x in cheap])
    sc = np.where(no_label | ~np.isfinite(sc), -np.inf, sc)  # no cheap label: oracle
    order = np.argsort(-sc, kind="stable")
    notes: list[str] = []
    how = _Sampling(grid, batch, lookahead)
    if metric == "accuracy":
        ranked = order[~no_label[order]]
        allowed_total = error_budget(target, n)
        pop = _Prefixes(ranked, lambda i: labels.values[i] != cheap[i], lambda size: allowed_total)
        size, bound = _search(pop, labels, delta, prior, rng, how)
        allowed: float = allowed_total
    elif metric == "precision":
        ranked = order[cheap[order] == positive]
        pop = _Prefixes(
            ranked, lambda i: labels.values[i] != positive, lambda k: (1.0 - target) * k
        )
        size, bound = _search(pop, labels, delta, prior, rng, how)
        allowed = (1.0 - target) * size
    else:
        size, bound, allowed = _recall(
            cheap, order, positive, labels, target, delta, prior, rng, how
        )
        ranked = order[(cheap[order] != positive) & ~no_label[order]]
    kept = np.zeros(n, dtype=bool)
    kept[ranked[:size]] = True
    kept &= ~labels.asked
    if metric != "accuracy":  # items outside the ranked population keep their cheap label
        outside = np.ones(n, dtype=bool)
        outside[ranked] = False
        if metric == "recall":
            outside &= cheap == positive
        kept |= outside & ~no_label & ~labels.asked
    labels.ask(np.flatnonzero(~kept))
    out = np.where(kept, cheap, labels.values)
    return CertifiedLabels(
        labels=out.tolist(),
        oracle_called=labels.asked.copy(),
        kept=kept,
        metric=metric,
        target=target,
        confidence=confidence,
        certified=size > 0,
        error_bound=bound,
        allowed=allowed,
        samples=int(labels.asked[ranked[:size]].sum()),
        positive=positive,
        notes=notes,
    )


def _recall(
    cheap: np.ndarray,
    order: np.ndarray,
    positive: str | None,
    labels: _Labels,
    target: float,
    delta: float,
    prior: tuple[float, float],
    rng: np.random.Generator,
    how: _Sampling,
) -> tuple[int, int, float]:
    """Recall: bound the positives the cheap stage found from below (``delta / 2``), then
    certify the prefix of its other labels whose hidden positives stay within
    ``(1 - T) / T`` of them (``delta / 2``)."""
    found = np.flatnonzero(cheap == positive)
    found_low = 0
    if found.size:
        draw = rng.permutation(found)
        s = 0
        while True:
            s = min(found.size, s + max(how.batch, 20))
            labels.ask(draw[:s])
            hits = int((labels.values[draw[:s]] == positive).sum())
            found_low = wor_lower_bound(found.size, s, hits, delta / 2, prior)
            estimate = hits / s * found.size
            if s >= found.size or found_low >= 0.95 * estimate or s >= 400:
                break
    allowed_total = (1.0 - target) / target * found_low
    ranked = order[(cheap[order] != positive) & (cheap[order] != None)]  # noqa: E711
    pop = _Prefixes(ranked, lambda i: labels.values[i] == positive, lambda size: allowed_total)
    size, bound = _search(pop, labels, delta / 2, prior, rng, how)
    return size, bound, allowed_total


def _check(
    n: int,
    scores: np.ndarray,
    target: float,
    confidence: float,
    metric: str,
    positive: str | None,
    grid: int,
    batch: int,
) -> None:
    if scores.shape != (n,):
        raise ConfigError(
            f"The 'scores' parameter must hold one score per item ({n}). Got shape "
            f"{scores.shape} instead.",
            field="scores",
        )
    check_unit("target", target, high=True)
    check_unit("confidence", confidence)
    if metric not in ("accuracy", "precision", "recall"):
        raise ConfigError(
            f"The 'metric' parameter must be 'accuracy', 'precision' or 'recall'. Got "
            f"{metric!r} instead.",
            field="metric",
        )
    if metric != "accuracy" and positive is None:
        raise ConfigError(f"{metric} needs the class it is about ('positive')", field="positive")
    if grid < 1 or batch < 1:
        raise ConfigError("'grid' and 'batch' must be >= 1", field="grid")


__all__ = [
    "CertifiedLabels",
    "certify_labels",
    "error_budget",
    "wor_lower_bound",
    "wor_upper_bound",
]
