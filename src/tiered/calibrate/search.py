"""Search cascades on a log view: which models, in which order, with which rule per stage.

The search grows cascades one non-final stage at a time. A *partial* cascade is a list of
non-final stages (model + candidate rule) and the mask of queries still open after them;
completing it with any later model as the final stage gives a full cascade whose summed
cost and quality are one matrix product away (``open @ cost``, ``open @ quality``), so
every completion of every partial is scored at once with numpy.

Each round expands every kept partial by every allowed (model, candidate) move, scores
all completions into the pool, and keeps for the next round:

- the best ``per_structure`` partials of *every* model sequence while there are at most
  ``max_structures`` sequences in the round (exhaustive over subsets and orders for the
  model counts of real logs), and
- the ``beam`` partials closest to the current frontier (greedy beyond that).

A move may also be a pair "run model g without accepting anything, then model h accepting
when it agrees with g" (a ``never`` stage): the two-model consistency check that makes
logs without any confidence signal cascadable. The frontier's thresholds are then refined
locally, one threshold per stage is scored on a dense grid for every sub-cascade
(:mod:`tiered.calibrate.dense`), and every frontier cascade is re-evaluated with the engine's
own rules.

The pool keeps the Pareto set of every *structure* (the models, in order, and the rule
family of each stage), not only the global frontier: cross-validation compares structures
with their thresholds refit per fold (see :mod:`tiered.calibrate.calibrator`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tiered.calibrate.cascades import Config, Step, Structure
from tiered.calibrate.evaluate import evaluate_stages
from tiered.calibrate.families import Candidate, RuleFamily, default_families, never_candidate
from tiered.errors import ConfigError
from tiered.replay.view import LogView


@dataclass(frozen=True, slots=True)
class SearchSettings:
    """Knobs of the search (defaults are tuned on the chain and RouterBench logs)."""

    max_stages: int = 4  # stages per cascade, the final one included
    beam: int = 40  # partials kept per round by closeness to the frontier
    per_structure: int = 2  # partials kept for every model sequence (the exhaustive part)
    max_structures: int = 400  # more model sequences than this in a round: beam only
    order: Literal["cost", "any"] = "cost"  # cheap -> expensive, or any order
    refine_rounds: int = 2
    never_moves: bool = True  # try "run g silently, accept h when it agrees with g"
    dense_grid: bool = True  # also one threshold per stage on every sub-cascade (dense.py)

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_stages, bool)
            or not isinstance(self.max_stages, int)
            or (self.max_stages < 1)
        ):
            raise ConfigError(
                f"The 'max_stages' parameter must be an int >= 1. Got {self.max_stages!r} instead.",
                field="max_stages",
            )
        if self.order not in ("cost", "any"):
            raise ConfigError(
                f"The 'order' parameter must be 'cost' or 'any'. Got {self.order!r} instead.",
                field="order",
            )


@dataclass(slots=True)
class Point:
    """A cascade with its mean cost and quality on the rows it was searched on."""

    config: Config
    cost: float
    quality: float


@dataclass
class SearchResult:
    frontier: list[Point]  # Pareto-optimal, cheapest first, evaluated with the engine's rules
    singles: list[Point]  # every model alone, in log order
    structures: dict[Structure, list[Point]]  # each structure's Pareto set, cheapest first
    evaluated: int  # cascades scored
    rounds: int


def pareto(
    cost: np.ndarray, quality: np.ndarray, simplicity: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the Pareto-optimal points (least cost, most quality), cheapest first.

    Among equal points the simplest (smallest ``simplicity``) wins.
    """
    if len(cost) == 0:
        return np.zeros(0, dtype=np.intp)
    simple = np.zeros(len(cost)) if simplicity is None else simplicity
    order = np.lexsort((simple, -quality, cost))
    q = quality[order]
    best = np.maximum.accumulate(q)
    prev = np.concatenate(([-np.inf], best[:-1]))
    return order[q > prev + 1e-9]


def _gap(
    front_cost: np.ndarray, front_quality: np.ndarray, cost: np.ndarray, quality: np.ndarray
) -> np.ndarray:
    """How far below the frontier each point lies (0 on it; inf for invalid points)."""
    k = np.searchsorted(front_cost, cost, side="right") - 1
    best = np.where(k >= 0, front_quality[np.clip(k, 0, None)], -np.inf)
    return np.where(np.isfinite(quality), np.maximum(best - quality, 0.0), np.inf)


class _Pool:
    """Every structure's Pareto set of scored cascades (sums over rows, not means)."""

    def __init__(self, n_rows: int) -> None:
        self.span = float(n_rows + 1)  # quality sums lie in [0, n]
        self.cost = np.zeros(0)
        self.quality = np.zeros(0)
        self.sid = np.zeros(0, dtype=np.int64)
        self.nsteps = np.zeros(0, dtype=np.int64)
        self.configs: list[Config] = []
        self.ids: dict[Structure, int] = {}
        self.keys: list[Structure] = []
        self.evaluated = 0
        self._front: np.ndarray | None = None

    def sid_of(self, key: Structure) -> int:
        got = self.ids.get(key)
        if got is None:
            got = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return got

    def merge(
        self,
        cost: np.ndarray,
        quality: np.ndarray,
        sid: np.ndarray,
        nsteps: np.ndarray,
        build: Callable[[int], Config],
    ) -> None:
        """Add scored cascades (``build(i)`` makes the i-th) and keep each structure's front."""
        ok = np.isfinite(quality)
        new = np.flatnonzero(ok)
        self.evaluated += len(new)
        n_old = len(self.cost)
        c = np.concatenate([self.cost, cost[new]])
        q = np.concatenate([self.quality, quality[new]])
        s = np.concatenate([self.sid, sid[new]])
        k = np.concatenate([self.nsteps, nsteps[new]])
        order = np.lexsort((k, -q, c, s))
        # quality offset by structure so one running max separates the structures
        lifted = q[order] + s[order] * self.span
        prev = np.concatenate(([-np.inf], np.maximum.accumulate(lifted)[:-1]))
        keep = np.sort(order[lifted > prev + 1e-9])
        self.configs = [
            self.configs[i] if i < n_old else build(int(new[i - n_old])) for i in keep.tolist()
        ]
        self.cost, self.quality, self.sid, self.nsteps = c[keep], q[keep], s[keep], k[keep]
        self._front = None

    def front(self) -> np.ndarray:
        """Indices of the globally Pareto-optimal pooled cascades, cheapest first."""
        if self._front is None:
            self._front = pareto(self.cost, self.quality, self.nsteps.astype(float))
        return self._front


@dataclass
class _Partial:
    steps: tuple[Step, ...]
    active: np.ndarray
    cost: float  # sums over rows, not means
    quality: float

    @property
    def models(self) -> tuple[int, ...]:
        return tuple(s.model for s in self.steps)

    @property
    def structure(self) -> Structure:
        return tuple((s.model, s.cand.family) for s in self.steps)


@dataclass
class _Group:
    """The children of one partial made by one model's candidates (after an optional prefix)."""

    parent: int
    prefix: tuple[Step, ...]  # steps added before the candidate's (a never stage)
    model: int
    cands: list[Candidate]
    masks: np.ndarray


class _Search:
    def __init__(
        self, view: LogView, families: Sequence[RuleFamily], settings: SearchSettings
    ) -> None:
        self.view = view
        self.settings = settings
        self.families = list(families)
        self.by_name = {f.name: f for f in self.families}
        self.Q = view.quality
        self.C = view.cost
        n, m = view.n, view.m
        mean_cost = self.C.mean(axis=0) if n else np.zeros(m)
        order = sorted(range(m), key=lambda j: (mean_cost[j], j))
        self.rank = np.empty(m, dtype=np.int64)
        self.rank[order] = np.arange(m)
        self._plain: dict[int, tuple[list[Candidate], np.ndarray]] = {}
        Moves = tuple[list[Candidate], np.ndarray]
        self._earlier: dict[tuple[int, tuple[int, ...]], Moves] = {}
        self._both: dict[tuple[int, tuple[int, ...]], Moves] = {}
        self.never = never_candidate(n)
        self.pool = _Pool(n)
        self.refined: set[tuple[object, ...]] = set()

    # -- moves -------------------------------------------------------------------------
    def _stack(self, cands: list[Candidate]) -> tuple[list[Candidate], np.ndarray]:
        """Candidates with distinct, non-empty masks (the first, simplest family wins)."""
        seen: set[bytes] = set()
        kept = []
        for c in cands:
            key = np.packbits(c.mask).tobytes()
            if key not in seen and c.mask.any():
                seen.add(key)
                kept.append(c)
        n = self.view.n
        masks = np.stack([c.mask for c in kept]) if kept else np.zeros((0, n), dtype=bool)
        return kept, masks

    def moves(
        self, j: int, earlier: tuple[int, ...], *, earlier_only: bool = False
    ) -> tuple[list[Candidate], np.ndarray]:
        """Candidate rules for model ``j`` at a stage after ``earlier`` (cached)."""
        plain = self._plain.get(j)
        if plain is None:
            cands = [
                c
                for f in self.families
                if not f.uses_earlier
                for c in f.candidates(self.view, j, ())
            ]
            plain = self._plain[j] = self._stack(cands)
        if not earlier:
            return ([], plain[1][:0]) if earlier_only else plain
        key = (j, earlier)
        got = self._earlier.get(key)
        if got is None:
            cands = [
                c
                for f in self.families
                if f.uses_earlier
                for c in f.candidates(self.view, j, earlier)
            ]
            got = self._earlier[key] = self._stack(cands)
        if earlier_only or not plain[0]:
            return got
        if not got[0]:
            return plain
        both = self._both.get(key)
        if both is None:
            both = self._both[key] = self._stack(plain[0] + got[0])
        return both

    def can_precede(self, used: tuple[int, ...], j: int) -> bool:
        """May model ``j`` be the next non-final stage after ``used``?"""
        if j in used:
            return False
        if self.settings.order == "cost":
            if used and self.rank[j] <= self.rank[used[-1]]:
                return False
            return bool((self.rank > self.rank[j]).any())
        return len(used) + 1 < self.view.m

    def finals(self, used: tuple[int, ...]) -> np.ndarray:
        """Mask of models that may be the final stage after ``used``."""
        ok = np.ones(self.view.m, dtype=bool)
        ok[list(used)] = False
        if self.settings.order == "cost" and used:
            ok &= self.rank > self.rank[used[-1]]
        return ok

    # -- rounds --------------------------------------------------------------------------
    def singles(self) -> None:
        m = self.view.m
        sid = np.array([self.pool.sid_of(((j, ""),)) for j in range(m)], dtype=np.int64)
        self.pool.merge(
            self.C.sum(axis=0),
            self.Q.sum(axis=0),
            sid,
            np.zeros(m, dtype=np.int64),
            lambda j: Config((), j),
        )

    def expand(self, partials: list[_Partial]) -> list[_Partial]:
        """One round: score every child's completions, pool them, return the kept children."""
        C, Q, m = self.C, self.Q, self.view.m
        max_steps = self.settings.max_stages - 1
        groups: list[_Group] = []
        comp_c: list[np.ndarray] = []
        comp_q: list[np.ndarray] = []
        comp_s: list[np.ndarray] = []
        child_c: list[np.ndarray] = []
        child_q: list[np.ndarray] = []

        def add_group(
            pi: int, p: _Partial, prefix: tuple[Step, ...], g: int, paid: float, earlier_only: bool
        ) -> None:
            used = (*p.models, *(s.model for s in prefix))
            cands, masks = self.moves(g, used, earlier_only=earlier_only)
            if not cands:
                return
            rest = (~masks & p.active).astype(float)
            cq = p.quality + (masks & p.active).astype(float) @ Q[:, g]
            ccost = p.cost + paid
            cc = ccost + rest @ C
            qq = cq[:, None] + rest @ Q
            qq[:, ~self.finals((*used, g))] = -np.inf
            qq[rest.sum(axis=1) == 0] = -np.inf  # the final stage would never run
            # structure id of every completion: (parent, prefix, (g, family), final)
            base = (*p.structure, *((s.model, s.cand.family) for s in prefix))
            fam_sid: dict[str, np.ndarray] = {}
            sid = np.empty(qq.shape, dtype=np.int64)
            for i, c in enumerate(cands):
                row = fam_sid.get(c.family)
                if row is None:
                    head = (*base, (g, c.family))
                    row = fam_sid[c.family] = np.array(
                        [self.pool.sid_of((*head, (f, ""))) for f in range(m)], dtype=np.int64
                    )
                sid[i] = row
            groups.append(_Group(pi, prefix, g, cands, masks))
            comp_c.append(cc)
            comp_q.append(qq)
            comp_s.append(sid)
            child_c.append(np.full(len(cands), ccost))
            child_q.append(cq)

        for pi, p in enumerate(partials):
            used = p.models
            spent = p.active.astype(float)
            paid = spent @ C
            for g in range(m):
                if self.can_precede(used, g):
                    add_group(pi, p, (), g, float(paid[g]), False)
            if not (self.settings.never_moves and len(used) + 2 <= max_steps):
                continue
            for g in range(m):
                if not self.can_precede(used, g):
                    continue
                pre = (Step(g, self.never),)
                for h in range(m):
                    if self.can_precede((*used, g), h):
                        add_group(pi, p, pre, h, float(paid[g] + paid[h]), True)
        if not groups:
            return []
        cost = np.concatenate(comp_c)
        quality = np.concatenate(comp_q)
        sid = np.concatenate(comp_s)
        owner = np.concatenate([np.full(len(g.cands), gi) for gi, g in enumerate(groups)])
        local = np.concatenate([np.arange(len(g.cands)) for g in groups])
        n_steps = np.array([len(partials[g.parent].steps) + len(g.prefix) + 1 for g in groups])

        def steps_of(ci: int) -> tuple[Step, ...]:
            g = groups[owner[ci]]
            return (*partials[g.parent].steps, *g.prefix, Step(g.model, g.cands[local[ci]]))

        self.pool.merge(
            cost.ravel(),
            quality.ravel(),
            sid.ravel(),
            np.repeat(n_steps[owner], m),
            lambda i: Config(steps_of(i // m), i % m),
        )
        # keep children for the next round: closest to the frontier, and per model sequence
        front = self.pool.front()
        gap = _gap(self.pool.cost[front], self.pool.quality[front], cost.ravel(), quality.ravel())
        score = gap.reshape(cost.shape).min(axis=1)
        alive = np.flatnonzero(np.isfinite(score) & (n_steps[owner] < max_steps))
        if not len(alive):
            return []
        seq_ids: dict[tuple[int, ...], int] = {}
        seq_of_group = np.array(
            [
                seq_ids.setdefault(
                    (*partials[g.parent].models, *(s.model for s in g.prefix), g.model),
                    len(seq_ids),
                )
                for g in groups
            ]
        )
        seq = seq_of_group[owner]
        chosen: list[int] = []
        if len(seq_ids) <= self.settings.max_structures:
            order = alive[np.lexsort((score[alive], seq[alive]))]
            s_sorted = seq[order]
            starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
            rank_in = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            chosen = order[rank_in < self.settings.per_structure].tolist()
        taken = set(chosen)
        by_score = alive[np.argsort(score[alive], kind="stable")]
        extra = [i for i in by_score[: self.settings.beam + len(taken)].tolist() if i not in taken]
        chosen += extra[: self.settings.beam]
        all_c = np.concatenate(child_c)
        all_q = np.concatenate(child_q)
        out = []
        for ci in chosen:
            g = groups[owner[ci]]
            p = partials[g.parent]
            active = p.active & ~g.masks[local[ci]]
            out.append(_Partial(steps_of(ci), active, float(all_c[ci]), float(all_q[ci])))
        return out

    # -- refinement ----------------------------------------------------------------------
    def _variants(
        self, config: Config, t: int, cands: list[Candidate]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sums of the cascade with step ``t``'s candidate replaced by each of ``cands``."""
        C, Q = self.C, self.Q
        active = np.ones(self.view.n, dtype=bool)
        cost = quality = 0.0
        for s in config.steps[:t]:
            quality += float(Q[active & s.cand.mask, s.model].sum())
            cost += float(C[active, s.model].sum())
            active &= ~s.cand.mask
        j = config.steps[t].model
        vm = np.stack([c.mask for c in cands])
        qv = quality + (vm & active).astype(float) @ Q[:, j]
        cv = np.full(len(cands), cost + float(C[active, j].sum()))
        A = active & ~vm
        for s in config.steps[t + 1 :]:
            qv += (A & s.cand.mask).astype(float) @ Q[:, s.model]
            cv += A.astype(float) @ C[:, s.model]
            A &= ~s.cand.mask
        cv += A.astype(float) @ C[:, config.final]
        qv += A.astype(float) @ Q[:, config.final]
        return cv, qv

    def refine(self) -> None:
        """Try finer thresholds around every frontier cascade's, stage by stage."""
        for _ in range(self.settings.refine_rounds):
            front = [self.pool.configs[i] for i in self.pool.front().tolist()]
            todo = [c for c in front if c.steps and c.key not in self.refined]
            if not todo:
                return
            costs: list[np.ndarray] = []
            quals: list[np.ndarray] = []
            sids: list[np.ndarray] = []
            steps_n: list[np.ndarray] = []
            made: list[tuple[Config, int, Candidate]] = []
            for config in todo:
                self.refined.add(config.key)
                sid = self.pool.sid_of(config.structure)
                for t, step in enumerate(config.steps):
                    fam = self.by_name.get(step.cand.family)
                    if fam is None:
                        continue
                    earlier = tuple(s.model for s in config.steps[:t])
                    cands = [
                        c
                        for c in fam.refine(self.view, step.model, earlier, step.cand)
                        if c.mask.any()
                    ]
                    if not cands:
                        continue
                    cv, qv = self._variants(config, t, cands)
                    costs.append(cv)
                    quals.append(qv)
                    sids.append(np.full(len(cands), sid, dtype=np.int64))
                    steps_n.append(np.full(len(cands), len(config.steps), dtype=np.int64))
                    made.extend((config, t, c) for c in cands)
            if not made:
                return

            def build(i: int, made: list[tuple[Config, int, Candidate]] = made) -> Config:
                config, t, cand = made[i]
                steps = list(config.steps)
                steps[t] = Step(steps[t].model, cand)
                return Config(tuple(steps), config.final)

            self.pool.merge(
                np.concatenate(costs),
                np.concatenate(quals),
                np.concatenate(sids),
                np.concatenate(steps_n),
                build,
            )

    # -- driver --------------------------------------------------------------------------
    def run(self) -> SearchResult:
        if self.view.n == 0:
            raise ConfigError("cannot calibrate on an empty log", field="log")
        for f in self.families:
            f.prepare(self.view)
        self.singles()
        partials = [_Partial((), np.ones(self.view.n, dtype=bool), 0.0, 0.0)]
        rounds = 0
        while partials and self.settings.max_stages > 1:
            partials = self.expand(partials)
            rounds += 1
        self.refine()
        if self.settings.dense_grid:  # after refining: its thresholds are fine already
            from tiered.calibrate.dense import add_dense_grid

            add_dense_grid(self)
        return self._result(rounds)

    def _result(self, rounds: int) -> SearchResult:
        names = self.view.models
        n = self.view.n
        pool = self.pool
        points = []
        for i in pool.front().tolist():
            config = pool.configs[i]
            out = evaluate_stages(self.view, config.stage_refs(names))
            points.append(Point(config, out.mean_cost, out.mean_quality))
        # exact numbers may differ from the pooled sums in the last bits: re-sort
        cost = np.array([p.cost for p in points])
        quality = np.array([p.quality for p in points])
        simple = np.array([len(p.config.steps) for p in points], dtype=float)
        frontier = [points[i] for i in pareto(cost, quality, simple).tolist()]
        structures: dict[Structure, list[Point]] = {}
        for i in np.lexsort((pool.cost, pool.sid)).tolist():
            structures.setdefault(pool.keys[pool.sid[i]], []).append(
                Point(pool.configs[i], pool.cost[i] / n, pool.quality[i] / n)
            )
        singles = [
            Point(Config((), j), float(self.C[:, j].mean()), float(self.Q[:, j].mean()))
            for j in range(self.view.m)
        ]
        return SearchResult(frontier, singles, structures, pool.evaluated, rounds)


def search(
    view: LogView,
    families: Sequence[RuleFamily] | None = None,
    settings: SearchSettings | None = None,
) -> SearchResult:
    """The Pareto frontier of cascades on ``view`` (mean cost vs mean quality)."""
    fams = list(families) if families is not None else default_families(view)
    return _Search(view, fams, settings or SearchSettings()).run()


__all__ = [
    "Config",
    "Point",
    "SearchResult",
    "SearchSettings",
    "Step",
    "Structure",
    "pareto",
    "search",
]
