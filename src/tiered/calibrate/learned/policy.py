"""Cascade routing (Dekoninck et al., 2024): at each step, stop or run the best next model.

Stages are in cost order and any of them may be skipped. For an item that has reached
stage ``k``, the value of *running model m next* (m >= k) is

    W[m] = E[max(P_m, B_m)] - λ·ĉ_m,       B_m = max over m' > m of W[m']

where ``ĉ_m`` is its expected cost, ``P_m`` its post-hoc quality estimate once it has
answered (unknown before it runs: modelled as a Beta around the ex-ante estimate ``q_m``
with the spread seen in training), and ``B_m`` the value of going on after it. The
last stage answers whatever reaches it: ``W[last] = q_last - λ·ĉ_last``. The max inside
the expectation is the option to continue, so running a cheap model whose answer may
settle the item is worth its price even when it alone is not the best route.

- **gate** (before stage k runs): run it iff ``W[k] >= max(W[k+1:])``, else skip it.
- **stop rule** (after it ran): accept iff its post-hoc ``P_k >= max(W[k+1:])``: the
  expected quality gain of going on does not pay for its cost.

λ trades quality for cost: λ = 0 routes for quality alone, a large λ to the cheapest
model. :func:`fit_lambda` sets it so that the mean cost meets a budget, or the quality a
target, on a replay log (simulated exactly as the engine would run it, with the
estimator's cross-fitted estimates on the rows it was trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import betainc

from tiered.calibrate.learned.estimator import QualityEstimator, normalise
from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog

_TIE = 1e-12


def expected_max(mu: np.ndarray, kappa: float | np.ndarray, b: np.ndarray) -> np.ndarray:
    """``E[max(P, b)]`` for ``P ~ Beta(mean mu, concentration kappa)`` (vectorised)."""
    mu = np.clip(np.asarray(mu, dtype=float), 1e-4, 1 - 1e-4)
    kappa = np.asarray(kappa, dtype=float)
    b = np.asarray(b, dtype=float)
    alpha, beta = mu * kappa, (1 - mu) * kappa
    x = np.clip(b, 0.0, 1.0)
    tail = mu * (1 - betainc(alpha + 1, beta, x)) - x * (1 - betainc(alpha, beta, x))
    out = x + np.maximum(tail, 0.0)
    return np.where(b >= 1.0, b, out)


def route_values(
    q: np.ndarray, c: np.ndarray, kappa: np.ndarray, lam: float, *, lookahead: bool = True
) -> np.ndarray:
    """``W``, shape ``(n, K)``: the value of running stage m next (see the module doc)."""
    n, k = q.shape
    W = np.empty((n, k))
    W[:, k - 1] = q[:, k - 1] - lam * c[:, k - 1]
    after = W[:, k - 1].copy()
    for m in range(k - 2, -1, -1):
        # with lookahead, running m keeps the option to go on once its answer is seen
        gain = expected_max(q[:, m], kappa[m], after) if lookahead else np.maximum(q[:, m], after)
        W[:, m] = gain - lam * c[:, m]
        np.maximum(after, W[:, m], out=after)
    return W


def best_after(W: np.ndarray, k: int) -> np.ndarray:
    """The value of going on after stage ``k`` (``-inf`` after the last stage)."""
    if k >= W.shape[1] - 1:
        return np.full(W.shape[0], -np.inf)
    return W[:, k + 1 :].max(axis=1)


def gate_mask(W: np.ndarray, k: int) -> np.ndarray:
    """Run stage ``k`` where it is the best next step (ties run the cheaper stage)."""
    return W[:, k] >= best_after(W, k) - _TIE


@dataclass
class Router:
    """Cascade routing over stages ``heads`` (the estimator's model names, cost order)."""

    estimator: QualityEstimator
    heads: list[str]
    lam: float
    lookahead: bool = True
    _cols: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.heads) < 1:
            raise ConfigError("cascade routing needs at least one stage", field="models")
        self._cols = np.array([self.estimator.index(h) for h in self.heads], dtype=np.intp)

    def values(self, items: Sequence[Item]) -> np.ndarray:
        est = self.estimator
        q = est.exante(items)[:, self._cols]
        c = est.cost(items)[:, self._cols]
        return route_values(q, c, est.kappa[self._cols], self.lam, lookahead=self.lookahead)

    def admit(self, items: Sequence[Item], k: int) -> np.ndarray:
        if k >= len(self.heads) - 1:
            return np.ones(len(items), dtype=bool)
        return gate_mask(self.values(items), k)

    def accept(
        self,
        items: Sequence[Item],
        k: int,
        answers: AnswerBatch,
        earlier: dict[str, Sequence[str | None]],
    ) -> np.ndarray:
        if k >= len(self.heads) - 1:
            return np.ones(len(items), dtype=bool)
        p = self.estimator.posthoc(items, self.heads[k], answers, earlier)
        return p >= best_after(self.values(items), k)


@dataclass
class Simulation:
    """Per-item outcome of cascade routing replayed on a log."""

    cost: np.ndarray
    quality: np.ndarray
    answered_by: np.ndarray
    ran: np.ndarray  # (n, K) which stages ran

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean()) if len(self.cost) else 0.0

    @property
    def mean_quality(self) -> float:
        return float(self.quality.mean()) if len(self.quality) else 0.0


class Replayer:
    """Replays cascade routing on a log for many λ, reusing every λ-independent feature."""

    def __init__(self, estimator: QualityEstimator, log: ReplayLog, heads: Sequence[str]) -> None:
        from tiered.replay.model import Replay, replay_items

        self.est = estimator
        self.heads = list(heads)
        self.items = replay_items(log)
        cols = [log.model_index(h) for h in self.heads]
        self.Q = np.asarray(log.quality[:, cols], dtype=float)
        self.C = np.asarray(log.cost[:, cols], dtype=float)
        self.j = np.array([estimator.index(h) for h in self.heads], dtype=np.intp)
        exante = estimator.exante(self.items)
        self.q = exante[:, self.j]
        self.c = estimator.cost(self.items)[:, self.j]
        self.kappa = estimator.kappa[self.j]
        self.folds = estimator._folds(self.items)
        self.answers = [Replay(log, h).predict(self.items) for h in self.heads]
        self.answered = [a.answered for a in self.answers]
        self.norm = [
            np.array(normalise(a.labels, h, estimator.extract), dtype=object)
            for a, h in zip(self.answers, self.heads, strict=True)
        ]
        # the post-hoc features that do not depend on the route, per stage
        self.static = [
            estimator.posthoc_static(self.items, int(j), a, exante)
            if estimator.use_posthoc
            else None
            for j, a in zip(self.j, self.answers, strict=True)
        ]

    def posthoc(self, k: int, rows: np.ndarray, ran: np.ndarray) -> np.ndarray:
        est = self.est
        j = int(self.j[k])
        if not est.use_posthoc:
            return self.q[rows, k]
        earlier = {}
        for i in range(k):
            labels = self.norm[i][rows].copy()
            labels[~ran[rows, i]] = None
            earlier[int(self.j[i])] = labels.tolist()
        agree = est.agreement(j, self.norm[k][rows].tolist(), earlier)
        static = self.static[k]
        assert static is not None
        X = sp.hstack([static[rows], sp.csr_matrix(agree, dtype=np.float32)], format="csr")
        folds = None if self.folds is None else self.folds[rows]
        return est.posthoc_heads[j].predict(X, folds)

    def run(self, lam: float, lookahead: bool = True) -> Simulation:
        n, K = self.q.shape
        W = route_values(self.q, self.c, self.kappa, lam, lookahead=lookahead)
        active = np.ones(n, dtype=bool)
        ran = np.zeros((n, K), dtype=bool)
        cost = np.zeros(n)
        quality = np.zeros(n)
        by = np.full(n, K - 1, dtype=np.int64)
        for k in range(K):
            last = k == K - 1
            run = active if last else active & gate_mask(W, k)
            rows = np.flatnonzero(run)
            if rows.size == 0:
                continue
            cost[rows] += self.C[rows, k]
            ran[rows, k] = True
            if last:
                acc = np.ones(rows.size, dtype=bool)
            else:
                p = self.posthoc(k, rows, ran)
                acc = (p >= best_after(W, k)[rows]) & self.answered[k][rows]
            done = rows[acc]
            quality[done] = self.Q[done, k]
            by[done] = k
            active[done] = False
        return Simulation(cost, quality, by, ran)


@dataclass
class LambdaFit:
    """The λ chosen on a log and what it gave there."""

    lam: float
    cost: float
    quality: float
    feasible: bool  # the objective was met on the log
    tried: list[tuple[float, float, float]]  # (λ, mean cost, mean quality)


def _lambda_grid(c: np.ndarray) -> np.ndarray:
    scale = 1.0 / max(float(np.max(c.mean(axis=0))), 1e-12)
    return np.concatenate([[0.0], scale * np.logspace(-3, 3, 37)])


def fit_lambda(
    replayer: Replayer,
    *,
    target: float | None = None,
    budget: float | None = None,
    lookahead: bool = True,
    refine: int = 12,
) -> LambdaFit:
    """λ for least cost at quality >= ``target``, or best quality at cost <= ``budget``.

    Both given: best quality within the budget that still meets the target. A grid over
    λ, then bisection next to the best feasible grid point.
    """
    if target is None and budget is None:
        raise ConfigError("cascade routing needs a quality target or a budget", field="objective")
    tried: dict[float, tuple[float, float]] = {}

    def at(lam: float) -> tuple[float, float]:
        got = tried.get(lam)
        if got is None:
            sim = replayer.run(lam, lookahead)
            got = tried[lam] = (sim.mean_cost, sim.mean_quality)
        return got

    def ok(lam: float) -> bool:
        c, q = at(lam)
        return (budget is None or c <= budget * (1 + 1e-9)) and (
            target is None or q >= target - 1e-12
        )

    def better(a: float, b: float) -> bool:
        """Is λ=a a better feasible point than λ=b?"""
        (ca, qa), (cb, qb) = at(a), at(b)
        if budget is not None:
            return (qa, -ca) > (qb, -cb)
        return (ca, -qa) < (cb, -qb)

    grid = _lambda_grid(replayer.c)
    for lam in grid.tolist():
        at(lam)
    feasible = [lam for lam in grid.tolist() if ok(lam)]
    if not feasible:
        # nothing meets the objective: the closest point (cheapest for a budget, else best quality)
        if budget is not None:
            lam = min(tried, key=lambda x: (tried[x][0], -tried[x][1]))
        else:
            lam = max(tried, key=lambda x: (tried[x][1], -tried[x][0]))
        c, q = at(lam)
        return LambdaFit(lam, c, q, False, sorted((k, *v) for k, v in tried.items()))
    best = feasible[0]
    for lam in feasible[1:]:
        if better(lam, best):
            best = lam
    # bisect towards the neighbouring infeasible grid point on the cheap (or better) side
    i = int(np.searchsorted(grid, best))
    for side in (i + 1, i - 1):
        if not 0 <= side < len(grid) or ok(float(grid[side])):
            continue
        lo, hi = best, float(grid[side])
        for _ in range(refine):
            mid = (lo + hi) / 2 if min(lo, hi) == 0 else float(np.sqrt(lo * hi))
            if ok(mid):
                if better(mid, best):
                    best = mid
                lo = mid
            else:
                hi = mid
    c, q = at(best)
    return LambdaFit(best, c, q, True, sorted((k, *v) for k, v in tried.items()))


__all__ = [
    "LambdaFit",
    "Replayer",
    "Router",
    "Simulation",
    "best_after",
    "expected_max",
    "fit_lambda",
    "gate_mask",
    "route_values",
]
