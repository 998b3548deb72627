"""A dense threshold grid over every sub-cascade, added to the search's pool.

The search (:mod:`tiered.calibrate.search`) grows cascades stage by stage and keeps a few
partials per model sequence, so a long structure's Pareto set holds only the threshold
combinations its beam happened to keep. The plain per-stage grid
(:mod:`tiered.calibrate.grid`) instead scores every combination of one threshold per stage
for every sub-cascade; where that finds cheaper points, cross-validation should be able
to pick them. :func:`add_dense_grid` scores the same combinations, with the threshold
family's own rules, and merges them into each structure's Pareto set: a structure is
then judged by the best thresholds it has, not by where the beam went. It runs after the
search's own refinement (the grid is fine already) and only on logs with a confidence
signal; it adds about a quarter to a search's time on five models.

Measured (``benchmarks/replay.py --pattern 'chains_*' --repeats 2``): at ``top`` a mean
relative cost of 0.779 at -0.53 points against 0.768 at -0.61 without it (Δ better on 4
logs, worse on none); the held-out error–cost area is unchanged (6.5% above the ceiling).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from tiered.calibrate.cascades import Config, Step
from tiered.calibrate.families import Candidate, ThresholdFamily, _sorted_signal
from tiered.replay.view import LogView

if TYPE_CHECKING:
    from tiered.calibrate.search import _Search

# The plain grid's thresholds: quantiles 1% to 99% of the signal in steps of 2.5%.
DENSE_QUANTILES = np.arange(0.01, 0.99 + 1e-12, 0.025)
MAX_COMBOS = 2000  # threshold combinations per sub-cascade (coarser for long ones)


def _thresholds(fam: ThresholdFamily, view: LogView, j: int, count: int) -> list[Candidate]:
    """Model ``j``'s candidates at the grid's quantiles, thinned to ``count`` as it does."""
    qs = DENSE_QUANTILES
    if len(qs) > count:
        qs = qs[np.round(np.linspace(0, len(qs) - 1, count)).astype(int)]
    srt = _sorted_signal(view, fam.signal, j)
    u = srt.distinct
    if len(u) < 2:
        return []
    at = np.quantile(srt.values[srt.ok], qs)
    if fam.direction == "above":
        ks = np.searchsorted(u, at, side="left")
    else:
        ks = np.searchsorted(u, at, side="right") - 1
    return fam._make(view, j, fam._index_thresholds(u, np.unique(ks)))


def _family(search: _Search) -> ThresholdFamily | None:
    """The threshold family on the signal the plain grid uses (logprob, else the first)."""
    fams = [f for f in search.families if type(f) is ThresholdFamily]
    natural = [f for f in fams if f.name == f"threshold:{f.signal}"]
    for f in natural:
        if f.signal == "logprob":
            return f
    return natural[0] if natural else None


def add_dense_grid(search: _Search, max_combos: int = MAX_COMBOS) -> None:
    """Score one threshold per non-final stage on every sub-cascade (cheapest first) and
    merge the results into ``search``'s pool (see the module doc)."""
    fam = _family(search)
    view = search.view
    if fam is None or view.m < 2 or search.settings.max_stages < 2:
        return
    Q, C = search.Q, search.C
    order = sorted(range(view.m), key=lambda j: int(search.rank[j]))
    cands: dict[tuple[int, int], tuple[list[Candidate], np.ndarray]] = {}

    def stage(j: int, count: int) -> tuple[list[Candidate], np.ndarray]:
        got = cands.get((j, count))
        if got is None:
            kept = _thresholds(fam, view, j, count)
            masks = np.stack([c.mask for c in kept]) if kept else np.zeros((0, view.n), bool)
            got = cands[(j, count)] = (kept, masks)
        return got

    longest = min(view.m, search.settings.max_stages)
    costs: list[np.ndarray] = []
    quals: list[np.ndarray] = []
    sids: list[np.ndarray] = []
    nsteps: list[np.ndarray] = []
    made: list[tuple[tuple[int, ...], list[list[Candidate]], tuple[int, ...]]] = []
    for k in range(2, longest + 1):
        per = max(2, int(max_combos ** (1.0 / (k - 1)) + 1e-9))
        for models in itertools.combinations(order, k):
            stages = [stage(j, per) for j in models[:-1]]
            if any(not s[0] for s in stages):
                continue
            open_ = np.ones((view.n,), dtype=bool)
            cost = np.zeros(())
            quality = np.zeros(())
            for j, (_, A) in zip(models[:-1], stages, strict=True):
                cost = cost[..., None] + (open_.astype(float) @ C[:, j])[..., None]
                quality = quality[..., None] + (open_[..., None, :] & A).astype(float) @ Q[:, j]
                open_ = open_[..., None, :] & ~A
            last = models[-1]
            rest = open_.astype(float)
            cost = cost + rest @ C[:, last]
            quality = quality + rest @ Q[:, last]
            quality[rest.sum(axis=-1) == 0] = -np.inf  # the final stage would never run
            key = (*((j, fam.name) for j in models[:-1]), (last, ""))
            costs.append(cost.ravel())
            quals.append(quality.ravel())
            sids.append(np.full(cost.size, search.pool.sid_of(key), dtype=np.int64))
            nsteps.append(np.full(cost.size, k - 1, dtype=np.int64))
            made.append((models, [s[0] for s in stages], cost.shape))
    if not made:
        return
    starts = np.cumsum([0, *(len(c) for c in costs)])

    def build(i: int) -> Config:
        g = int(np.searchsorted(starts, i, side="right")) - 1
        models, stage_cands, shape = made[g]
        idx = np.unravel_index(i - int(starts[g]), shape)
        steps = tuple(
            Step(j, cs[int(t)]) for j, cs, t in zip(models[:-1], stage_cands, idx, strict=True)
        )
        return Config(steps, models[-1])

    search.pool.merge(
        np.concatenate(costs), np.concatenate(quals), np.concatenate(sids),
        np.concatenate(nsteps), build,
    )  # fmt: skip


__all__ = ["DENSE_QUANTILES", "MAX_COMBOS", "add_dense_grid"]
