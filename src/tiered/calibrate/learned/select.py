"""Pick the rule family by cross-validation: confidence rules, learned scorers, or routing.

:func:`calibrate_with_estimators` runs, on the same folds,

- ``confidence``: the calibrator with its built-in families (thresholds on the models'
  own signals, windows, votes, agreement);
- ``scorer``: the same search with the learned post-hoc scorer as an extra family
  (FrugalGPT);
- ``routing``: cascade routing over every model (gates and stop rules from one λ),

and keeps the one with the best pooled held-out result that meets the objective. Adding
estimators therefore never makes the cross-validated result worse than confidence-only
calibration: if they do not help, the confidence rules win. A learned family must also
win by a clear margin (``min_gain``, 5% of the cost by default): the best of several
families on the same folds looks better than it is (the pick is the max of noisy
estimates), and on outer held-out folds of the chain logs the learned families won by a
few percent in the inner CV and then lost held out (see ``benchmarks/routing.py --outer``).

Cascade routing is cross-validated like the calibrator: on each fold the estimator and λ
are fitted on the other folds, asking a ``margin`` more quality (or a share of the budget),
and the smallest margin whose pooled held-out result meets the objective is kept.

Everything fitted (estimators per fold, the calibrators' searches) is kept in a
:class:`SelectionSession`, so another objective (:meth:`Selection.with_objective`) costs
only the λ fits and the choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from tiered.calibrate.learned.estimator import QualityEstimator
from tiered.calibrate.learned.fit import RoutingFit, fit_cascade_routing
from tiered.calibrate.learned.policy import Replayer, Simulation, fit_lambda
from tiered.calibrate.objective import Objective, QualityTarget
from tiered.core.spec import CascadeSpec
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog

QUALITY_MARGINS = (0.0, 0.005, 0.01, 0.02)
BUDGET_SHARES = (1.0, 0.95, 0.9, 0.8)
FAMILIES = ("confidence", "scorer", "routing")


def _top(log: ReplayLog) -> int:
    q, c = log.mean_quality(), log.mean_cost()
    tied = np.flatnonzero(q >= q.max() - 1e-12)
    return int(tied[np.argmin(c[tied])])


def _resolve(q: QualityTarget | None, top: float) -> float | None:
    return None if q is None else q.resolve(top)


@dataclass
class FamilyCV:
    """One family's cross-validated result (pooled over held-out folds)."""

    family: str
    quality: float
    cost: float
    top_quality: float
    top_cost: float
    reference_quality: float | None
    meets: bool
    margin: float
    seconds: float
    detail: str = ""

    @property
    def relative_cost(self) -> float:
        return self.cost / self.top_cost if self.top_cost > 0 else float("nan")


class _Remembered:
    """A replayer that remembers its runs: the λ fits of several margins and objectives
    try the same grid of λ on the same rows."""

    def __init__(self, replayer: Replayer) -> None:
        self.replayer = replayer
        self.c = replayer.c
        self._runs: dict[tuple[float, bool], Simulation] = {}

    def run(self, lam: float, lookahead: bool = True) -> Simulation:
        key = (float(lam), lookahead)
        got = self._runs.get(key)
        if got is None:
            got = self._runs[key] = self.replayer.run(lam, lookahead)
        return got


class OverBudget(Exception):
    """Fitting would take longer than the time allowed (``projected`` seconds in all)."""

    def __init__(self, projected: float) -> None:
        super().__init__(f"about {projected:.0f} s needed")
        self.projected = projected


class RoutingSession:
    """Cascade routing cross-validated on ``log``: one estimator per fold, kept for every
    objective (folds drawn as the calibrator draws them).

    With a ``deadline`` (a ``time.perf_counter()`` value), :class:`OverBudget` is raised
    after the first fold's fit when the rest (the other folds and the final fit on every
    row) would end past it.
    """

    def __init__(
        self,
        log: ReplayLog,
        *,
        folds: int = 5,
        seed: int = 0,
        make: Callable[[], QualityEstimator] = QualityEstimator,
        models: Sequence[str] | None = None,
        deadline: float | None = None,
    ) -> None:
        started = time.perf_counter()
        self.log = log
        self.make = make
        self.heads = list(models) if models is not None else list(log.models)
        n = len(log)
        assign = np.random.default_rng(seed).permutation(n) % folds
        self.runs: list[tuple[_Remembered, _Remembered, float, int, ReplayLog]] = []
        for k in range(folds):
            tr, te = log.subset(assign != k), log.subset(assign == k)
            est = make().fit(tr)
            if deadline is not None and k == 0:
                took = time.perf_counter() - started
                # the final fit sees every row: about folds / (folds - 1) of a fold's work
                projected = took * (folds + folds / max(folds - 1, 1))
                if started + projected > deadline:
                    raise OverBudget(projected)
            top = _top(tr)
            rep = (
                _Remembered(Replayer(est, tr, self.heads)),
                _Remembered(Replayer(est, te, self.heads)),
            )
            self.runs.append((*rep, float(tr.mean_quality()[top]), top, te))
        self._estimator: QualityEstimator | None = None
        self.seconds = time.perf_counter() - started

    def cv(self, objective: Objective, tolerance: float = 0.005) -> FamilyCV:
        """The smallest margin whose pooled held-out result meets ``objective``."""
        started = time.perf_counter()
        n = len(self.log)
        runs = self.runs
        top_q = sum(float(te.quality[:, top].sum()) for *_, top, te in runs) / n
        top_c = sum(float(te.cost[:, top].sum()) for *_, top, te in runs) / n
        ref = _resolve(objective.min_quality, top_q)
        budget_mode = objective.budget is not None
        tried = []
        for margin in BUDGET_SHARES if budget_mode else QUALITY_MARGINS:
            cost = quality = 0.0
            for rep_tr, rep_te, fold_top, _, _ in runs:
                target = _resolve(objective.min_quality, fold_top)
                tr = cast(Replayer, rep_tr)
                if budget_mode:
                    fit = fit_lambda(tr, target=target, budget=objective.budget * margin)  # type: ignore[operator]
                else:
                    fit = fit_lambda(tr, target=None if target is None else target + margin)
                sim = rep_te.run(fit.lam)
                cost += float(sim.cost.sum())
                quality += float(sim.quality.sum())
            cost, quality = cost / n, quality / n
            meets = objective.met(quality, cost, ref, tolerance)
            tried.append((margin, cost, quality, meets))
            if meets:
                break
        pick = next((t for t in tried if t[3]), None)
        if pick is None:
            pick = (
                max(tried, key=lambda t: (t[2], -t[1]))
                if not budget_mode
                else min(tried, key=lambda t: (t[1], -t[2]))
            )
        margin, cost, quality, meets = pick
        return FamilyCV(
            family="routing",
            quality=quality,
            cost=cost,
            top_quality=top_q,
            top_cost=top_c,
            reference_quality=ref,
            meets=meets,
            margin=margin,
            seconds=self.seconds + time.perf_counter() - started,
            detail=f"cascade routing over {len(self.heads)} models",
        )

    def final(self, objective: Objective, margin: float) -> RoutingFit:
        """Cascade routing refit on every row with the margin cross-validation chose."""
        if self._estimator is None:
            self._estimator = self.make().fit(self.log)
        log, est, heads = self.log, self._estimator, self.heads
        if objective.budget is not None:
            q = objective.min_quality
            return fit_cascade_routing(
                log, min_quality=q, budget=objective.budget * margin, estimator=est, models=heads
            )
        target = _resolve(objective.min_quality, float(log.mean_quality()[_top(log)]))
        return fit_cascade_routing(
            log,
            min_quality=None if target is None else min(target + margin, 1.0),
            estimator=est,
            models=heads,
        )


def cross_validate_routing(
    log: ReplayLog,
    objective: Objective,
    *,
    folds: int = 5,
    seed: int = 0,
    tolerance: float = 0.005,
    make: Callable[[], QualityEstimator] = QualityEstimator,
    models: Sequence[str] | None = None,
) -> FamilyCV:
    """Cross-validate cascade routing on ``log`` (folds as the calibrator draws them)."""
    session = RoutingSession(log, folds=folds, seed=seed, make=make, models=models)
    return session.cv(objective, tolerance)


@dataclass
class Selection:
    """What :func:`calibrate_with_estimators` found: every family's CV and the winner."""

    objective: Objective
    results: list[FamilyCV]
    winner: FamilyCV
    spec: CascadeSpec
    fitted: Any  # the winner's fit: a Calibration or a RoutingFit
    notes: list[str] = field(default_factory=list)
    session: SelectionSession | None = field(default=None, repr=False, compare=False)

    def save(self, path: str | Path) -> Path:
        self.spec.save(path)
        return Path(path)

    def with_objective(
        self, min_quality: str | float | QualityTarget | None = None, budget: float | None = None
    ) -> Selection:
        """The same fits (and folds), another objective: no estimator is refit."""
        if self.session is None:
            raise ConfigError("this selection kept no fitted state", field="objective")
        return self.session.decide(Objective.make(min_quality, budget))


def _better(a: FamilyCV, b: FamilyCV, budget_mode: bool, min_gain: float = 0.0) -> bool:
    """Whether ``a`` beats the incumbent ``b``; when both meet the objective, by more than
    ``min_gain`` of the cost (quality target) or of the error rate (budget)."""
    if a.meets != b.meets:
        return a.meets
    if not a.meets:  # neither meets: the closer one
        return (a.cost < b.cost) if budget_mode else (a.quality > b.quality)
    if budget_mode:
        return (1.0 - a.quality) < (1.0 - b.quality) * (1.0 - min_gain) or (
            min_gain == 0.0 and (a.quality, -a.cost) > (b.quality, -b.cost)
        )
    return a.cost < b.cost * (1.0 - min_gain) or (
        min_gain == 0.0 and (a.cost, -a.quality) < (b.cost, -b.quality)
    )


def choose_family(
    results: Sequence[FamilyCV], *, budget_mode: bool, min_gain: float = 0.05
) -> FamilyCV:
    """The winner among cross-validated families: the first (simplest) unless another
    beats it by ``min_gain``; among those that do, the best."""
    winner = results[0]
    for r in results[1:]:
        if _better(r, winner, budget_mode, min_gain if winner is results[0] else 0.0):
            winner = r
    return winner


def _family_cv(name: str, cal: Any, objective: Objective, seconds: float) -> FamilyCV:
    """A calibrator's cross-validation as a family result (its fit, with no CV)."""
    rep = cal.cv
    if rep is None:
        return FamilyCV(name, cal.chosen.quality, cal.chosen.cost, cal.top_quality, cal.top_cost,
                        cal.target, True, 0.0, seconds)  # fmt: skip
    ref = rep.reference_quality
    return FamilyCV(
        family=name,
        quality=rep.quality,
        cost=rep.cost,
        top_quality=rep.top_quality,
        top_cost=rep.top_cost,
        reference_quality=ref,
        meets=objective.met(rep.quality, rep.cost, ref, rep.tolerance),
        margin=rep.margin,
        seconds=seconds,
        detail=getattr(rep, "structure", "") or cal.chosen.text(),
    )


class SelectionSession:
    """The fits of every family on one log, decided for any objective."""

    def __init__(
        self,
        log: ReplayLog,
        objective: Objective,
        *,
        folds: int,
        seed: int,
        families: Sequence[str],
        tolerance: float,
        settings: Any,
        min_gain: float,
        confidence: Any = None,
        routing: RoutingSession | None = None,
    ) -> None:
        from tiered.calibrate import calibrate
        from tiered.calibrate.learned.families import with_scorer

        self.log = log
        self.tolerance = tolerance
        self.min_gain = min_gain
        self.families = list(families)
        self.cals: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.routing: RoutingSession | None = None
        self.notes: list[str] = []
        q, b = objective.min_quality, objective.budget
        for name in self.families:
            started = time.perf_counter()
            if name == "routing":
                self.routing = routing or RoutingSession(log, folds=folds, seed=seed)
            elif name == "confidence" and confidence is not None:
                self.cals[name] = confidence
            else:
                try:
                    self.cals[name] = calibrate(
                        log, min_quality=q, budget=b, folds=folds, seed=seed,
                        cv_tolerance=tolerance, settings=settings,
                        families=with_scorer if name == "scorer" else None,
                    )  # fmt: skip
                except ConfigError as exc:
                    self.notes.append(f"{name}: {exc.reason}")
            self.seconds[name] = time.perf_counter() - started

    def decide(self, objective: Objective) -> Selection:
        results: list[FamilyCV] = []
        fits: dict[str, Any] = {}
        notes = list(self.notes)
        for name in self.families:
            started = time.perf_counter()
            if name == "routing":
                assert self.routing is not None
                results.append(self.routing.cv(objective, self.tolerance))
                continue
            cal = self.cals.get(name)
            if cal is None:
                continue
            if cal.objective != objective:
                try:
                    cal = cal.with_objective(objective.min_quality, objective.budget)
                except ConfigError as exc:
                    notes.append(f"{name}: {exc.reason}")
                    continue
            fits[name] = cal
            if cal.cv is None:
                notes.append(f"{name}: no cross-validation (log too small); judged on its fit")
            seconds = self.seconds[name] + time.perf_counter() - started
            results.append(_family_cv(name, cal, objective, seconds))
        if not results:
            raise ConfigError(
                "no rule family could be calibrated: " + "; ".join(notes), field="log"
            )
        budget_mode = objective.budget is not None
        winner = choose_family(results, budget_mode=budget_mode, min_gain=self.min_gain)
        if winner.family == "routing":
            assert self.routing is not None
            fitted: Any = self.routing.final(objective, winner.margin)
        else:
            fitted = fits[winner.family]
        spec = fitted.spec
        spec = spec.model_copy(
            update={
                "metadata": {
                    **spec.metadata,
                    "rule_family_chosen": winner.family,
                    "families_cv": [
                        {
                            "family": r.family,
                            "quality": r.quality,
                            "cost_per_item": r.cost,
                            "relative_cost": r.relative_cost,
                            "meets_objective": r.meets,
                        }
                        for r in results
                    ],
                }
            }
        )
        return Selection(objective, results, winner, spec, fitted, notes, self)


def calibrate_with_estimators(
    log: ReplayLog,
    *,
    min_quality: str | float | QualityTarget | None = None,
    budget: float | None = None,
    folds: int = 5,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    tolerance: float = 0.005,
    settings: Any = None,
    min_gain: float = 0.05,
    confidence: Any = None,
) -> Selection:
    """Cross-validate each rule family on ``log`` and keep the best (see the module doc).

    ``settings``: the calibrator's :class:`~tiered.calibrate.SearchSettings` (stages, order).
    ``min_gain``: how much better (share of the cost, or of the error rate under a budget)
    a later family must do in cross-validation than the first one to replace it.
    ``confidence``: a confidence-rules :class:`~tiered.calibrate.Calibration` of ``log``
    already made with the same folds and seed (it is not made again).
    """
    objective = Objective.make(min_quality, budget)
    if not (isinstance(min_gain, int | float) and 0.0 <= min_gain < 1.0):
        raise ConfigError(
            f"The 'min_gain' parameter must be a number in [0, 1). Got {min_gain!r} instead.",
            field="min_gain",
        )
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ConfigError(
            "The 'families' parameter must name some of confidence, scorer, routing. "
            f"Got {list(families)!r} instead.",
            field="families",
        )
    session = SelectionSession(
        log, objective, folds=folds, seed=seed, families=families, tolerance=tolerance,
        settings=settings, min_gain=float(min_gain), confidence=confidence,
    )  # fmt: skip
    return session.decide(objective)


__all__ = [
    "BUDGET_SHARES",
    "FAMILIES",
    "QUALITY_MARGINS",
    "FamilyCV",
    "OverBudget",
    "RoutingSession",
    "Selection",
    "SelectionSession",
    "calibrate_with_estimators",
    "choose_family",
    "cross_validate_routing",
]
