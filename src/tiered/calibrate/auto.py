"""What ``tiered calibrate`` does: confidence rules, learned families where they help, a verdict.

1. The calibrator with the built-in rule families, cross-validated
   (:func:`~tiered.calibrate.calibrate`), asking a cascade to save at least ``min_saving``,
   on smoothed quality (:mod:`tiered.calibrate.smooth`: each 0/1 outcome replaced by its
   estimated chance, which makes the chosen thresholds hold up better on new data).
2. When the log's own confidence signals are weak (:func:`signal_report`: no model but
   the dearest has a signal telling its right answers from its wrong ones with an AUC of
   at least ``min_auc``; a log without signals has none), the learned families are
   trained too, on the same folds: cascade routing and, if time allows, the FrugalGPT
   scorer (:mod:`tiered.calibrate.learned.select`). They must beat the confidence rules by
   ``min_gain`` in cross-validation to be chosen. Training stops early, with a note, when
   it would take longer than ``time_budget`` seconds.
3. A one-line verdict (:mod:`tiered.calibrate.verdict`).

>>> rec = calibrate_log(log, min_quality="top")     # doctest: +SKIP
>>> print(rec.verdict.line); rec.save("cascade.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tiered.calibrate.calibrator import Calibration, calibrate
from tiered.calibrate.objective import Objective, QualityTarget
from tiered.calibrate.verdict import DEFAULT_MIN_SAVING, Verdict, verdict
from tiered.core.signals import higher_is_confident
from tiered.core.spec import CascadeSpec
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog
from tiered.replay.view import LogView

if TYPE_CHECKING:
    from tiered.calibrate.learned.select import FamilyCV, Selection

Learned = Literal["auto", "always", "never"]
MIN_AUC = 0.65  # below this a signal barely ranks right answers above wrong ones
TIME_BUDGET = 120.0  # seconds for the learned families (issue: 14k rows in <= 2 minutes)
# learned estimators read the queries' text: with fewer rows they learn little (measured:
# on the 300-row RouterBench MBPP log cascade routing missed the target held out)
MIN_ROWS = 500


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (ties count one half)."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True, slots=True)
class SignalReport:
    """How well each model's best signal separates its right answers from its wrong ones
    (AUC), for every model but the dearest (it answers whatever reaches it)."""

    best: dict[str, tuple[str, float]]  # model -> (signal, AUC); models with a signal
    strong: bool
    min_auc: float

    def text(self) -> str:
        if not self.best:
            return "the log has no confidence signals"
        name, (sig, auc) = max(self.best.items(), key=lambda kv: kv[1][1])
        how = "strong" if self.strong else "weak"
        return f"{how} confidence signals (best: {name}'s {sig}, AUC {auc:.2f})"


def signal_report(view: LogView, min_auc: float = MIN_AUC) -> SignalReport:
    """Per model, its most telling signal (see :class:`SignalReport`)."""
    mean_cost = view.cost.mean(axis=0) if view.n else np.zeros(view.m)
    dearest = int(np.argmax(mean_cost))
    best: dict[str, tuple[str, float]] = {}
    for j in range(view.m):
        if j == dearest:
            continue
        right = view.quality[:, j] > 0.5
        for sig, values in view.signals.items():
            s = values[:, j]
            ok = view.answered[:, j] & np.isfinite(s)
            if ok.sum() < 10:
                continue
            auc = _auc(s[ok] if higher_is_confident(sig) else -s[ok], right[ok])
            if math.isfinite(auc) and auc > best.get(view.models[j], ("", -1.0))[1]:
                best[view.models[j]] = (sig, auc)
    strong = any(auc >= min_auc for _, auc in best.values())
    return SignalReport(best, strong, min_auc)


@dataclass
class Recommendation:
    """What ``tiered calibrate`` recommends: the cascade file, the family and the verdict."""

    objective: Objective
    calibration: Calibration  # the confidence-rules calibration (always made)
    selection: Selection | None  # learned families compared, when they were trained
    family: str  # the rule family of the cascade file: confidence, scorer or routing
    spec: CascadeSpec
    verdict: Verdict
    signals: SignalReport
    why: str  # which families were tried, which won and why
    seconds: float
    notes: list[str] = field(default_factory=list)
    min_gain: float = 0.05
    views: tuple[LogView, LogView] | None = field(default=None, repr=False)  # recorded, fitted

    @property
    def winner(self) -> FamilyCV | None:
        return None if self.selection is None else self.selection.winner

    def save(self, path: str | Path) -> Path:
        """Write the recommended cascade (and a learned family's estimator next to it)."""
        self.spec.save(path)
        return Path(path)

    def with_objective(
        self, min_quality: str | float | QualityTarget | None = None, budget: float | None = None
    ) -> Recommendation:
        """The same fits, another objective (no search or estimator is redone)."""
        started = time.perf_counter()
        objective = Objective.make(min_quality, budget)
        judged = self.calibration.with_objective(objective.min_quality, objective.budget)
        cal = judged if self.views is None else _recorded(judged, *self.views)
        sel = None if self.selection is None else self.selection.with_objective(
            objective.min_quality, objective.budget
        )  # fmt: skip
        min_saving = cal.cv.min_saving if cal.cv is not None else DEFAULT_MIN_SAVING
        why = self.why.split("; ", 1)[0] if self.selection is not None else self.why
        took = time.perf_counter() - started
        rec = _recommend(objective, cal, sel, self.signals, why, min_saving, took,
                         list(self.notes), self.min_gain, judged)  # fmt: skip
        rec.views = self.views
        return rec


def _recorded(cal: Calibration, view: LogView, fit_view: LogView) -> Calibration:
    """A calibration on smoothed quality, its fitted-log numbers as recorded."""
    if fit_view is view or np.array_equal(fit_view.quality, view.quality):
        return cal
    from tiered.calibrate.smooth import recorded

    return recorded(cal, view)


def _learned_verdict(sel: Selection, top: str, min_saving: float) -> Verdict:
    w = sel.winner
    rel = w.relative_cost
    d = 100 * (w.quality - w.top_quality)
    what = w.detail if w.family == "routing" else "the cascade with the learned scorer"
    if 1.0 - rel < min_saving:
        return Verdict(
            "not_worth",
            f"not worth a cascade: {what} saves only {100 * (1 - rel):.1f}% in "
            f"cross-validation: use {top} alone",
        )
    return Verdict(
        "cascade",
        f"use {what}: {rel:.2f}× the cost of {top} at {d:+.1f} points against it in "
        "cross-validation",
    )


def _why(sel: Selection, min_gain: float) -> str:
    by = {r.family: r for r in sel.results}
    conf = by.get("confidence")
    w = sel.winner
    others = ", ".join(
        f"{r.family} {r.relative_cost:.2f}×{'' if r.meets else ' (misses the target)'}"
        for r in sel.results
    )
    if w.family == "confidence":
        return (
            f"confidence rules kept: no learned family did {100 * min_gain:.0f}% better in "
            f"cross-validation ({others})"
        )
    base = "" if conf is None else f" against confidence rules' {conf.relative_cost:.2f}×"
    if conf is not None and not conf.meets:
        base = " (confidence rules miss the target)"
    return f"{w.family} won: {w.relative_cost:.2f}× the cost in cross-validation{base} ({others})"


def _recommend(
    objective: Objective,
    cal: Calibration,
    sel: Selection | None,
    signals: SignalReport,
    why: str,
    min_saving: float,
    seconds: float,
    notes: list[str],
    min_gain: float = 0.05,
    judged: Calibration | None = None,
) -> Recommendation:
    """The recommendation; ``judged`` is the calibration as fitted (on smoothed quality),
    which the verdict speaks of, ``cal`` the same with the recorded numbers."""
    judged = judged or cal
    extra: dict[str, Any] = {}
    if sel is not None:
        extra = {k: sel.spec.metadata[k] for k in ("rule_family_chosen", "families_cv")}
    if sel is not None and sel.winner.family != "confidence":
        v = _learned_verdict(sel, cal.top_model, min_saving)
        spec, family = sel.spec, sel.winner.family
        if v.kind == "not_worth":
            # keep the confidence-rules file: it is the best model alone or a real saving
            spec, family, v = cal.spec, "confidence", verdict(judged, min_saving=min_saving)
    else:
        v = verdict(judged, min_saving=min_saving)
        spec, family = cal.spec, "confidence"
    if sel is not None:
        why = f"{why}; {_why(sel, min_gain)}"
        notes = notes + [n for n in sel.notes if n not in notes]
    md = {**spec.metadata, **extra, "verdict": v.line, "rule_family": family}
    spec = spec.model_copy(update={"metadata": md})
    return Recommendation(
        objective, cal, sel, family, spec, v, signals, why, seconds, notes, min_gain
    )


def calibrate_log(
    log: ReplayLog | LogView,
    *,
    min_quality: str | float | QualityTarget | None = None,
    budget: float | None = None,
    folds: int = 5,
    seed: int = 0,
    settings: Any = None,
    learned: Learned = "auto",
    time_budget: float = TIME_BUDGET,
    min_saving: float = DEFAULT_MIN_SAVING,
    min_auc: float = MIN_AUC,
    min_gain: float = 0.05,
    smooth: bool = True,
) -> Recommendation:
    """Calibrate ``log`` as ``tiered calibrate`` does (see the module doc).

    ``learned``: ``auto`` trains the learned families when the log's signals are weak,
    ``always`` whatever the signals (and whatever the time), ``never`` not at all.
    """
    started = time.perf_counter()
    if learned not in ("auto", "always", "never"):
        raise ConfigError(
            f"The 'learned' parameter must be auto, always or never. Got {learned!r} instead.",
            field="learned",
        )
    objective = Objective.make(min_quality, budget)
    view = log if isinstance(log, LogView) else LogView.of(log)
    notes: list[str] = []
    fit_view = view
    if smooth:
        from tiered.calibrate.smooth import smoothed

        fit_view = smoothed(view)
    judged = calibrate(
        fit_view, min_quality=objective.min_quality, budget=objective.budget, folds=folds,
        seed=seed, settings=settings, min_saving=min_saving,
    )  # fmt: skip
    cal = _recorded(judged, view, fit_view)
    signals = signal_report(view, min_auc)
    sel = None
    if learned == "never" or (learned == "auto" and signals.strong):
        why = (
            "learned families not tried (--learned never)"
            if learned == "never"
            else f"learned families not tried: {signals.text()}"
        )
    elif view.n < (MIN_ROWS if learned == "auto" else 4 * max(folds, 2)):
        why = (
            f"learned families not tried: {signals.text()}, but {view.n} rows are too few "
            f"to learn from the queries' text (fewer than {MIN_ROWS}; --learned always "
            "trains them anyway)"
        )
    else:
        sel, why = _learned(
            view, objective, cal, folds=max(folds, 2), seed=seed, settings=settings,
            signals=signals, forced=learned == "always", started=started,
            time_budget=time_budget, min_gain=min_gain,
        )  # fmt: skip
    rec = _recommend(objective, cal, sel, signals, why, min_saving,
                     time.perf_counter() - started, notes, min_gain, judged)  # fmt: skip
    rec.views = (view, fit_view)
    return rec


def frontier_models(view: LogView) -> list[str]:
    """The models no other model beats alone (as good for less, or better for as much),
    cheapest first: cascade routing over them learns from fewer, stronger heads."""
    from tiered.calibrate.search import pareto

    q, c = view.quality.mean(axis=0), view.cost.mean(axis=0)
    return [view.models[j] for j in pareto(c, q).tolist()]


def _learned(
    view: LogView,
    objective: Objective,
    cal: Calibration,
    *,
    folds: int,
    seed: int,
    settings: Any,
    signals: SignalReport,
    forced: bool,
    started: float,
    time_budget: float,
    min_gain: float,
) -> tuple[Selection | None, str]:
    """Train the learned families within the time budget; the selection and why."""
    from tiered.calibrate.learned.estimator import QualityEstimator
    from tiered.calibrate.learned.select import (
        OverBudget,
        RoutingSession,
        SelectionSession,
    )

    log = view.log if view.n == len(view.log) else view.log.subset(view.rows)
    reason = "--learned always" if forced else signals.text()
    deadline = None if forced else started + time_budget
    heads = frontier_models(view)

    def make() -> QualityEstimator:
        return QualityEstimator(models=heads)

    t0 = time.perf_counter()
    try:
        routing = RoutingSession(
            log, folds=folds, seed=seed, make=make, models=heads, deadline=deadline
        )
    except OverBudget as exc:
        return None, (
            f"learned families skipped ({reason}): training them would take about "
            f"{exc.projected:.0f} s, over the {time_budget:.0f} s budget (--learned always "
            "trains them anyway)"
        )
    per_fit = (time.perf_counter() - t0) / folds
    routing.cv(objective)  # its λ runs are remembered: the choice below reuses them
    final = per_fit * folds / max(folds - 1, 1)  # the winner is refit on every row
    families = ["confidence", "routing"]
    # the scorer refits an estimator (3 inner folds) in every fold search and the full one
    scorer_time = per_fit * (folds + 1) * 0.7
    left = math.inf if deadline is None else deadline - time.perf_counter() - final
    skipped = ""
    if scorer_time < left:
        families.insert(1, "scorer")
    else:
        skipped = f"; the learned scorer skipped (about {scorer_time:.0f} s more)"
    session = SelectionSession(
        log, objective, folds=folds, seed=seed, families=families, tolerance=0.005,
        settings=settings, min_gain=min_gain, confidence=cal, routing=routing,
    )  # fmt: skip
    took = time.perf_counter() - t0
    why = f"learned families trained ({reason}; {took:.0f} s){skipped}"
    return session.decide(objective), why


__all__ = [
    "MIN_AUC",
    "TIME_BUDGET",
    "Recommendation",
    "SignalReport",
    "calibrate_log",
    "frontier_models",
    "signal_report",
]
