"""Offline calibration: the cost–quality frontier of cascades on a replay log, and a choice.

:func:`calibrate` searches the log (see :mod:`tiered.calibrate.search`) and picks the
operating point for the objective. Picking the cheapest point that reaches the target on
a few hundred rows over-fits: thresholds tuned to the rows look better than they are.
So the choice is made by k-fold cross-validation of the whole procedure, per *structure*
(the models in order and the rule family of each stage): on each fold the search runs
on the other folds, the structure's thresholds are set there for the objective (asking a
``margin`` more quality, or spending a ``margin`` share of the budget), and the result
is scored on the held-out fold. The structure and margin with the best pooled held-out
result that meets the objective (within ``cv_tolerance``) are then refit on every row.

Cross-validation may also aim up to two points *below* a quality target, and the chosen
point then meets the target less that aim on the rows it was fitted on: when several
models are close, the best one's quality on those rows overstates what it does on new
rows (the winner's curse), so matching it exactly over-pays. A lower aim is kept only
when its held-out quality, less a paired standard error, still meets the target. Whatever
cross-validation prefers, the chosen point meets the objective (so lowered) on the fitted
rows; if no cascade meets the target there, a :class:`~tiered.errors.ConfigError` says
what the best one reaches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tiered.calibrate.certificate import Certificate
from tiered.calibrate.curve import frontier_record
from tiered.calibrate.evaluate import evaluate_stages
from tiered.calibrate.families import RuleFamily, default_families
from tiered.calibrate.objective import Objective, QualityTarget
from tiered.calibrate.search import (
    Config,
    Point,
    SearchResult,
    SearchSettings,
    Structure,
    search,
)
from tiered.core.rules import DeferralRule
from tiered.core.spec import CascadeSpec, StageSpec
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog
from tiered.replay.view import LogView

_EPS = 1e-9
# Extra quality the fold searches are asked for (objective: quality target).
QUALITY_MARGINS = (0.0, 0.005, 0.01, 0.02)
# Aims below the target the fold searches may also try, judged by the paired held-out test:
# when several models are close, the best one's quality on the fitted rows overstates what
# it does on new rows (the winner's curse), and asking the cascade to match it over-pays.
LOWER_AIMS = (-0.005, -0.01, -0.02)
# Share of the budget the fold searches may spend (objective: budget).
BUDGET_SHARES = (1.0, 0.95, 0.9, 0.8, 0.7)

FamilyFactory = Callable[[LogView], Sequence[RuleFamily]]


@dataclass(slots=True)
class FrontierPoint:
    """A cascade on the frontier: its stages (model names), rules, cost and quality."""

    cost: float
    quality: float
    stages: list[str]
    rules: list[DeferralRule]  # one per non-final stage
    families: list[str]  # the family each rule came from
    config: Config = field(repr=False)

    def text(self) -> str:
        parts = [f"{s} [{r.describe()}]" for s, r in zip(self.stages, self.rules, strict=False)]
        return " -> ".join([*parts, self.stages[-1]])

    def spec(self, name: str = "cascade", metadata: dict[str, Any] | None = None) -> CascadeSpec:
        """The cascade file of this point (replay models named after the log's models)."""
        stages = [
            StageSpec(name=s, model={"kind": "replay", "model": s}, rule=r)
            for s, r in zip(self.stages, self.rules, strict=False)
        ]
        last = self.stages[-1]
        stages.append(StageSpec(name=last, model={"kind": "replay", "model": last}))
        return CascadeSpec(name=name, stages=stages, metadata=metadata or {})


@dataclass(slots=True)
class CVReport:
    """The calibration procedure scored on held-out folds (pooled over all folds)."""

    folds: int
    structure: str  # the chosen structure, e.g. "a[threshold:logprob] -> b"
    margin: float  # extra quality asked of each fold (< 0: below), or the budget share spent
    quality: float
    cost: float
    top_quality: float  # held-out quality of each training fold's best single model
    top_cost: float
    reference_quality: float | None  # the quality target resolved on held-out data
    tolerance: float
    structures_tried: int
    per_fold: list[dict[str, float]] = field(default_factory=list)
    # pooled held-out (quality, cost) of every structure tried, asking exactly the target
    held_out: dict[Structure, tuple[float, float]] = field(default_factory=dict, repr=False)
    min_saving: float = 0.0  # a cascade had to save this share of the baseline's cost

    @property
    def relative_cost(self) -> float:
        return self.cost / self.top_cost if self.top_cost > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "structure": self.structure,
            "margin": self.margin,
            "quality": self.quality,
            "cost_per_item": self.cost,
            "relative_cost": self.relative_cost,
            "top_quality": self.top_quality,
            "top_cost_per_item": self.top_cost,
            "reference_quality": self.reference_quality,
            "tolerance": self.tolerance,
            "structures_tried": self.structures_tried,
        }


class _Decides(Protocol):
    """What :meth:`Calibration.with_objective` asks of the searches it kept."""

    def decide(self, objective: Objective) -> Calibration: ...


@dataclass
class Calibration:
    """What :func:`calibrate` found: the frontier, the chosen point and its cascade file."""

    objective: Objective
    target: float | None  # the quality target resolved on the fitted rows
    frontier: list[FrontierPoint]
    chosen: FrontierPoint
    singles: list[FrontierPoint]
    top_model: str
    top_quality: float
    top_cost: float
    oracle_quality: float
    oracle_cost: float
    cv: CVReport | None
    n_items: int
    log_path: str | None
    seconds: float
    evaluated: int
    notes: list[str] = field(default_factory=list)
    session: _Decides | None = field(default=None, repr=False, compare=False)
    certificate: Certificate | None = None  # a certified calibration's promise
    spec: CascadeSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec = self.chosen.spec(self._name(), self.metadata())

    @property
    def relative_cost(self) -> float:
        return self.chosen.cost / self.top_cost if self.top_cost > 0 else math.nan

    def _name(self) -> str:
        return f"{Path(self.log_path).stem}-cascade" if self.log_path else "calibrated-cascade"

    def metadata(self) -> dict[str, Any]:
        q = self.objective.min_quality
        md: dict[str, Any] = {
            "calibrated_by": "tiered calibrate",
            "objective": self.objective.describe(self.target),
            "min_quality": None if q is None else q.text,
            "target_quality": self.target,
            "budget_per_item": self.objective.budget,
            "fitted_on": self.log_path,
            "rows": self.n_items,
            "expected": {
                "quality": self.chosen.quality,
                "cost_per_item": self.chosen.cost,
                "relative_cost": self.relative_cost,
            },
            "top_model": {
                "name": self.top_model,
                "quality": self.top_quality,
                "cost_per_item": self.top_cost,
            },
            "oracle": {"quality": self.oracle_quality, "cost_per_item": self.oracle_cost},
            "rule_families": self.chosen.families,
            "cv": None if self.cv is None else self.cv.to_dict(),
            "frontier": [frontier_record(p) for p in self.frontier],
        }
        if self.notes:
            md["notes"] = list(self.notes)
        if self.certificate is not None:
            md["certificate"] = self.certificate.to_dict()
        return md

    def save(self, path: str | Path) -> Path:
        """Write the chosen cascade as a YAML cascade file."""
        self.spec.save(path)
        return Path(path)

    def with_objective(
        self, min_quality: str | float | QualityTarget | None = None, budget: float | None = None
    ) -> Calibration:
        """The same searches (and folds), another objective: cheap, no new search."""
        if self.session is None:
            raise ConfigError("this calibration kept no search state", field="objective")
        return self.session.decide(Objective.make(min_quality, budget))


def _point(view: LogView, p: Point) -> FrontierPoint:
    names = view.models
    c = p.config
    return FrontierPoint(
        cost=p.cost,
        quality=p.quality,
        stages=[names[j] for j in c.models],
        rules=[s.cand.rule for s in c.steps],
        families=c.families(),
        config=c,
    )


def structure_text(key: Structure, names: Sequence[str]) -> str:
    parts = [f"{names[j]}[{fam}]" if fam else names[j] for j, fam in key]
    return " -> ".join(parts)


def choose(frontier: Sequence[Point], target: float | None, budget: float | None) -> Point | None:
    """The point for the objective (least cost at ``target``, or best quality within
    ``budget``, or both), or None if no point meets it."""
    pts = list(frontier)
    if target is not None:
        pts = [p for p in pts if p.quality >= target - _EPS]
    if budget is not None:
        pts = [p for p in pts if p.cost <= budget * (1 + 1e-12)]
        return max(pts, key=lambda p: (p.quality, -p.cost)) if pts else None
    return min(pts, key=lambda p: (p.cost, -p.quality)) if pts else None


def _with_margin(
    points: Sequence[Point], objective: Objective, target: float | None, margin: float
) -> Point | None:
    """The point chosen asking ``margin`` more quality (or spending ``margin`` of the budget),
    else the plain objective's point, else None."""
    if objective.budget is not None:
        got = choose(points, target, objective.budget * margin)
    else:
        got = choose(points, None if target is None else target + margin, None)
    return got or choose(points, target, objective.budget)


def _resolve(q: QualityTarget | None, top_quality: float) -> float | None:
    return None if q is None else q.resolve(top_quality)


@dataclass
class _Fold:
    train: LogView
    test: LogView
    result: SearchResult
    top: int
    top_quality: float  # of the best single model on the training rows
    cache: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)

    def score(self, p: Point) -> tuple[float, np.ndarray]:
        """Held-out summed cost and per-query quality of a point fitted on the training rows."""
        key = id(p.config)
        got = self.cache.get(key)
        if got is None:
            out = evaluate_stages(self.test, p.config.stage_refs(self.test.models))
            got = self.cache[key] = (float(out.cost.sum()), out.quality)
        return got

    def base(self, target: float | None) -> int:
        """The single model a quality target asks for on the training rows: the cheapest
        that reaches it (the best model for ``top``), else the best model."""
        got = choose(self.result.singles, target, None) if target is not None else None
        return self.top if got is None else got.config.final

    def fallback(self, objective: Objective, target: float | None = None) -> Point:
        """What a fold uses when a structure cannot meet the objective there: a single model
        (the cheapest reaching a quality target, the best affordable one for a budget)."""
        singles = self.result.singles
        if objective.budget is not None:
            got = choose(singles, None, objective.budget)
            return got or min(singles, key=lambda p: p.cost)
        return singles[self.base(target)]


class _Session:
    """The searches of one calibration (all rows, and each cross-validation fold)."""

    def __init__(
        self,
        view: LogView,
        *,
        folds: int,
        seed: int,
        tolerance: float,
        caution: float,
        min_saving: float = 0.0,
        repeats: int = 1,
        settings: SearchSettings,
        families: FamilyFactory,
    ) -> None:
        started = time.perf_counter()
        self.view = view
        self.folds = folds
        self.tolerance = tolerance
        self.caution = caution
        self.min_saving = min_saving
        self.result = search(view, families(view), settings)
        self.runs: list[_Fold] = []
        self.notes: list[str] = []
        if folds >= 2 and view.n >= 4 * folds:
            rng = np.random.default_rng(seed)
            for _ in range(repeats):
                assign = rng.permutation(view.n) % folds
                for k in range(folds):
                    train, test = view.take(assign != k), view.take(assign == k)
                    res = search(train, families(train), settings)
                    top, top_q, _ = train.top()
                    self.runs.append(_Fold(train, test, res, top, top_q))
        elif folds >= 2:
            self.notes.append(
                f"log too small for {folds}-fold cross-validation ({view.n} rows): "
                "the point is chosen on the fitted rows alone"
            )
        self.search_seconds = time.perf_counter() - started

    def _check(self, objective: Objective, target: float | None) -> None:
        """Raise a clear error when no cascade meets the objective on the fitted rows."""
        view, frontier = self.view, self.result.frontier
        where = view.log.path or "the log"
        top, top_q, _ = view.top()
        best = max(frontier, key=lambda p: p.quality)
        if target is not None and best.quality < target - _EPS:
            raise ConfigError(
                f"no cascade reaches quality {target:.4f} "
                f"({objective.min_quality.text}) on {where}: the best reaches "  # type: ignore[union-attr]
                f"{best.quality:.4f} ({_point(view, best).text()}); the best single model "
                f"{view.models[top]} reaches {top_q:.4f}",
                field="min_quality",
            )
        if objective.budget is not None and choose(frontier, target, objective.budget) is None:
            within = choose(frontier, None, objective.budget)
            if within is None:
                cheapest = min(frontier, key=lambda p: p.cost)
                why = f"the cheapest cascade costs ${cheapest.cost:.4g}/item"
            else:
                why = f"the best within it reaches quality {within.quality:.4f}, below {target:.4f}"
            raise ConfigError(
                f"no cascade fits a budget of ${objective.budget:.4g}/item on {where}: {why}",
                field="budget",
            )

    def _candidates(self, objective: Objective, target: float | None) -> list[Structure]:
        """Structures worth cross-validating: they meet the objective on the fitted rows and,
        for a quality target, more cheaply than the best single model."""
        _, _, top_cost = self.view.top()
        out = []
        for key, pts in self.result.structures.items():
            p = choose(pts, target, objective.budget)
            if p is None:
                continue
            if objective.budget is None and len(key) > 1 and p.cost >= top_cost:
                continue
            out.append(key)
        return out

    def _cross_validate(
        self, objective: Objective, target: float | None
    ) -> tuple[CVReport, Structure, float]:
        """Score every candidate structure (thresholds refit per fold) and margin held out."""
        runs = self.runs
        n = sum(f.test.n for f in runs)  # each row once per repeat
        top_q = sum(float(f.test.quality[:, f.top].sum()) for f in runs) / n
        top_c = sum(float(f.test.cost[:, f.top].sum()) for f in runs) / n
        q_obj = objective.min_quality
        ref = None
        if q_obj is not None:
            ref = q_obj.resolve(top_q) if q_obj.relative else q_obj.value
        budget_mode = objective.budget is not None
        margins = BUDGET_SHARES if budget_mode else QUALITY_MARGINS + LOWER_AIMS
        targets = [_resolve(q_obj, f.top_quality) for f in runs]
        structures = self._candidates(objective, target)
        # the paired baseline: the single model that meets the target on each training fold
        # (the best one for ``top``; for a lower target, the cheapest model reaching it)
        base_held_out = np.concatenate(
            [f.test.quality[:, f.base(t)] for f, t in zip(runs, targets, strict=True)]
        )
        base_cost = (
            sum(float(f.test.cost[:, f.base(t)].sum()) for f, t in zip(runs, targets, strict=True))
            / n
        )
        held: dict[Structure, tuple[float, float]] = {}
        single = choose(self.result.singles, target, None) if target is not None else None
        base_j = self.view.top()[0] if single is None else single.config.final
        baseline: Structure = ((base_j, ""),)
        if baseline not in structures and not budget_mode:
            structures.append(baseline)
        best: tuple[tuple[float, ...], Structure, float, float, float, list[Any]] | None = None
        for key in structures:
            for margin in margins:
                cost = 0.0
                per_fold = []
                held_out = []
                for f, t in zip(runs, targets, strict=True):
                    p = _with_margin(f.result.structures.get(key, []), objective, t, margin)
                    c, q = f.score(p if p is not None else f.fallback(objective, t))
                    cost += c
                    held_out.append(q)
                    per_fold.append({"quality": float(q.mean()), "cost_per_item": c / f.test.n})
                qv = np.concatenate(held_out)
                cq, cc = float(qv.mean()), cost / n
                # a cascade whose quality rests on many queries where it differs from the
                # baseline model must clear the target by more (a paired standard error)
                doubt = self.caution * float(np.std(qv - base_held_out)) / math.sqrt(n)
                ok = objective.met(cq - doubt, cc, ref, self.tolerance)
                if margin == margins[0]:
                    held[key] = (cq, cc)
                if ok and not budget_mode and len(key) > 1:
                    # a cascade saving less than min_saving is not worth its stages
                    ok = cc <= (1.0 - self.min_saving) * base_cost
                # feasible first; then least cost (quality target) or most quality (budget);
                # then the simpler structure and the smaller margin
                value = -cq if budget_mode else cc
                slack = 1.0 - margin if budget_mode else margin
                rank = (0.0 if ok else 1.0, value if ok else -cq, float(len(key)), slack)
                if best is None or rank < best[0]:
                    best = (rank, key, margin, cq, cc, per_fold)
                if ok and budget_mode:
                    break  # spending less of the budget only lowers quality
        assert best is not None  # the structures include the baseline or a feasible one
        _, key, margin, cq, cc, per_fold = best
        text = structure_text(key, self.view.models)
        report = CVReport(
            self.folds, text, margin, cq, cc, top_q, top_c, ref, self.tolerance,
            len(structures), per_fold, held, self.min_saving,
        )  # fmt: skip
        return report, key, margin

    def decide(self, objective: Objective) -> Calibration:
        started = time.perf_counter()
        view, result = self.view, self.result
        top, top_q, top_c = view.top()
        target = _resolve(objective.min_quality, top_q)
        self._check(objective, target)
        chosen = choose(result.frontier, target, objective.budget)
        cv = None
        aim = target  # the quality the fitted rows must show
        if self.runs:
            cv, key, margin = self._cross_validate(objective, target)
            picked = _with_margin(result.structures.get(key, []), objective, target, margin)
            if target is not None and margin < 0:  # a lower aim (budgets spend shares >= 0)
                aim = target + margin
            if picked is not None:
                # re-evaluate with the engine's rules: pooled sums are the search's numbers
                out = evaluate_stages(view, picked.config.stage_refs(view.models))
                chosen = Point(picked.config, out.mean_cost, out.mean_quality)
        # the objective must hold on the fitted rows (less an aim below it that the held-out
        # test accepted), whatever cross-validation preferred
        if chosen is None or (
            (aim is not None and chosen.quality < aim - _EPS)
            or (objective.budget is not None and chosen.cost > objective.budget * (1 + 1e-12))
        ):
            chosen = choose(result.frontier, target, objective.budget)
        assert chosen is not None  # _check: some frontier point meets the objective

        from tiered.eval.metrics import oracle_bound

        log = view.log if view.n == len(view.log) else view.log.subset(view.rows)
        oracle = oracle_bound(log)
        return Calibration(
            objective=objective,
            target=target,
            frontier=[_point(view, p) for p in result.frontier],
            chosen=_point(view, chosen),
            singles=[_point(view, p) for p in result.singles],
            top_model=view.models[top],
            top_quality=top_q,
            top_cost=top_c,
            oracle_quality=oracle.quality,
            oracle_cost=oracle.cost_per_item,
            cv=cv,
            n_items=view.n,
            log_path=view.log.path,
            seconds=self.search_seconds + time.perf_counter() - started,
            evaluated=result.evaluated + sum(f.result.evaluated for f in self.runs),
            notes=list(self.notes),
            session=self,
        )


def calibrate(
    log: ReplayLog | LogView,
    *,
    min_quality: str | float | QualityTarget | None = None,
    budget: float | None = None,
    folds: int = 5,
    seed: int = 0,
    cv_tolerance: float = 0.005,
    cv_caution: float = 1.0,
    min_saving: float = 0.0,
    cv_repeats: int = 1,
    settings: SearchSettings | None = None,
    families: FamilyFactory | None = None,
) -> Calibration:
    """Find the cost–quality frontier of cascades on ``log`` and choose a point on it.

    - ``min_quality``: ``top``, ``top-0.01``, ``top*0.95`` or a number; least cost subject to
      quality >= it (default ``top`` when no budget is given).
    - ``budget``: USD per item; best quality whose mean cost stays within it.
    - ``folds``: k-fold cross-validation choosing the structure and safety margin (``0`` or
      ``1``: choose on the fitted rows alone).
    - ``cv_tolerance``: how far below the target the pooled held-out quality may fall.
    - ``cv_caution``: how many paired standard errors (held-out quality differences to the
      baseline single model: the best one for ``top``, else the cheapest one reaching the
      target) a structure's held-out quality must clear the target by.
    - ``cv_repeats``: repeat the cross-validation with new folds (pooled); each repeat costs
      another ``folds`` searches.
    - ``min_saving``: for a quality target, a cascade must cost at least this share less
      than the baseline single model in cross-validation, else the single model is kept
      (a cascade saving 1% is not worth its extra stages and latency).
    - ``families``: builds the rule families from a view (default
      :func:`~tiered.calibrate.families.default_families`); the extension point for new rules.

    To make the quality target a promise instead, see :func:`tiered.calibrate.certify`.
    """
    objective = Objective.make(min_quality, budget)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0:
        raise ConfigError(
            f"The 'folds' parameter must be an int >= 0. Got {folds!r} instead.", field="folds"
        )
    if isinstance(cv_repeats, bool) or not isinstance(cv_repeats, int) or cv_repeats < 1:
        raise ConfigError(
            f"The 'cv_repeats' parameter must be an int >= 1. Got {cv_repeats!r} instead.",
            field="cv_repeats",
        )
    if not (isinstance(min_saving, int | float) and 0 <= min_saving < 1):
        raise ConfigError(
            f"The 'min_saving' parameter must be a number in [0, 1). Got {min_saving!r} instead.",
            field="min_saving",
        )
    if not (isinstance(cv_tolerance, int | float) and 0 <= cv_tolerance < 1):
        raise ConfigError(
            f"The 'cv_tolerance' parameter must be a number in [0, 1). Got {cv_tolerance!r} "
            "instead.",
            field="cv_tolerance",
        )
    view = log if isinstance(log, LogView) else LogView.of(log)
    if view.n == 0:
        raise ConfigError("cannot calibrate on an empty log", field="log")
    session = _Session(
        view,
        folds=folds,
        seed=seed,
        tolerance=float(cv_tolerance),
        caution=float(cv_caution),
        min_saving=float(min_saving),
        repeats=cv_repeats,
        settings=settings or SearchSettings(),
        families=families or default_families,
    )
    return session.decide(objective)


__all__ = [
    "BUDGET_SHARES",
    "LOWER_AIMS",
    "QUALITY_MARGINS",
    "CVReport",
    "Calibration",
    "FrontierPoint",
    "calibrate",
    "choose",
    "structure_text",
]
