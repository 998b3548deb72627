"""A plain baseline: one threshold per stage, grid-searched over every sub-cascade.

This is the grid search Zellinger & Thomson compare against. For every sub-cascade of
the log's models in cost order (two models or more), each non-final stage accepts when
its confidence signal is at or above a threshold (below, for ``entropy``) from a grid of
quantiles of that signal on the rows (1% to 99% in steps of 2.5%; coarser for long
sub-cascades so each has at most ``max_combos`` threshold combinations). Every
combination is scored on the rows, and the Pareto set over all of them, the single
models included, is the grid's frontier. No agreement rules, no refinement, no
cross-validation: the simplest thing a calibrator must beat.

>>> front = grid_frontier(view)                                   # doctest: +SKIP
>>> pick = choose_grid(front, target=view.top()[1])               # doctest: +SKIP
>>> cost, quality = grid_outcome(held_out_view, pick)             # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tiered.calibrate.search import pareto
from tiered.core.signals import higher_is_confident
from tiered.replay.view import LogView

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class GridPoint:
    """A sub-cascade (log columns, cheapest first) with one threshold per non-final stage."""

    models: tuple[int, ...]
    thresholds: tuple[float, ...]
    cost: float  # mean per item on the rows it was fitted on
    quality: float

    def text(self, names: Sequence[str], signal: str | None) -> str:
        parts = [
            f"{names[j]} [{signal} {t:.4g}]"
            for j, t in zip(self.models, self.thresholds, strict=False)
        ]
        return " -> ".join([*parts, names[self.models[-1]]])


def grid_signal(view: LogView) -> str | None:
    """The signal the grid thresholds: ``logprob`` when present, else the first one."""
    usable = [s for s in sorted(view.signals) if np.isfinite(view.signals[s]).any()]
    if "logprob" in usable:
        return "logprob"
    return usable[0] if usable else None


def _accept(view: LogView, signal: str, j: int, thresholds: np.ndarray) -> np.ndarray:
    """Accept masks of model ``j``, one row per threshold."""
    s = view.signals[signal][:, j]
    with np.errstate(invalid="ignore"):
        if higher_is_confident(signal):
            m = s[None, :] >= thresholds[:, None]
        else:
            m = s[None, :] <= thresholds[:, None]
    return m & view.answered[None, :, j]


def _levels(values: np.ndarray, count: int, step: float, eps: float) -> np.ndarray:
    ok = values[np.isfinite(values)]
    if len(ok) == 0:
        return np.zeros(0)
    qs = np.arange(eps, 1 - eps + 1e-12, step)
    if len(qs) > count:
        qs = qs[np.round(np.linspace(0, len(qs) - 1, count)).astype(int)]
    return np.unique(np.quantile(ok, qs))


def _score(
    view: LogView, models: tuple[int, ...], masks: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Summed cost and quality of every threshold combination (an array per grid axis)."""
    Q, C = view.quality, view.cost
    open_ = np.ones((view.n,), dtype=bool)
    cost = np.zeros(())
    quality = np.zeros(())
    for j, A in zip(models[:-1], masks, strict=True):
        cost = cost[..., None] + (open_.astype(float) @ C[:, j])[..., None]
        acc = open_[..., None, :] & A
        quality = quality[..., None] + acc.astype(float) @ Q[:, j]
        open_ = open_[..., None, :] & ~A
    last = models[-1]
    f = open_.astype(float)
    return cost + f @ C[:, last], quality + f @ Q[:, last]


def grid_frontier(
    view: LogView,
    *,
    signal: str | None = None,
    step: float = 0.025,
    eps: float = 0.01,
    max_combos: int = 2000,
    max_stages: int | None = None,
) -> list[GridPoint]:
    """The grid's Pareto frontier on ``view`` (cheapest first; see the module doc)."""
    sig = signal if signal is not None else grid_signal(view)
    n, m = view.n, view.m
    order = sorted(range(m), key=lambda j: (float(view.cost[:, j].mean()), j))
    costs: list[np.ndarray] = [view.cost.sum(axis=0)]
    quals: list[np.ndarray] = [view.quality.sum(axis=0)]
    made: list[tuple[tuple[int, ...], list[np.ndarray], tuple[int, ...]]] = []
    for j in range(m):
        made.append(((j,), [], ()))
    if sig is not None:
        longest = min(m, max_stages or m)
        for k in range(2, longest + 1):
            per = max(2, int(max_combos ** (1.0 / (k - 1)) + 1e-9))
            for models in itertools.combinations(order, k):
                levels = [
                    _levels(view.signals[sig][view.answered[:, j], j], per, step, eps)
                    for j in models[:-1]
                ]
                if any(len(v) == 0 for v in levels):
                    continue
                masks = [_accept(view, sig, j, v) for j, v in zip(models[:-1], levels, strict=True)]
                c, q = _score(view, models, masks)
                costs.append(c.ravel())
                quals.append(q.ravel())
                for idx in itertools.product(*(range(len(v)) for v in levels)):
                    made.append((models, levels, idx))
    cost = np.concatenate(costs) / n
    quality = np.concatenate(quals) / n
    steps = np.array([len(x[0]) for x in made], dtype=float)
    out = []
    for i in pareto(cost, quality, steps).tolist():
        models, levels, idx = made[i]
        th = tuple(float(levels[s][t]) for s, t in enumerate(idx))
        out.append(GridPoint(models, th, float(cost[i]), float(quality[i])))
    return out


def grid_outcome(
    view: LogView, point: GridPoint, signal: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cost and quality of ``point`` replayed on ``view`` (other rows, same models)."""
    sig = signal if signal is not None else grid_signal(view)
    n = view.n
    cost, quality = np.zeros(n), np.zeros(n)
    open_ = np.ones(n, dtype=bool)
    for j, t in zip(point.models[:-1], point.thresholds, strict=True):
        assert sig is not None
        acc = _accept(view, sig, j, np.array([t]))[0]
        cost[open_] += view.cost[open_, j]
        done = open_ & acc
        quality[done] = view.quality[done, j]
        open_ &= ~acc
    last = point.models[-1]
    cost[open_] += view.cost[open_, last]
    quality[open_] = view.quality[open_, last]
    return cost, quality


def choose_grid(points: Sequence[GridPoint], target: float) -> GridPoint:
    """The cheapest point reaching quality ``target`` (else the best one)."""
    ok = [p for p in points if p.quality >= target - _EPS]
    if ok:
        return min(ok, key=lambda p: (p.cost, -p.quality))
    return max(points, key=lambda p: (p.quality, -p.cost))


__all__ = ["GridPoint", "choose_grid", "grid_frontier", "grid_outcome", "grid_signal"]
