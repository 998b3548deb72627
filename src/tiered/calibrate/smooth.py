"""Smoothed quality: each answer's chance of being right, in place of its 0/1 outcome.

On a log of a few hundred rows the search scores every candidate cascade by counting
0/1 outcomes, and picks thresholds where the outcomes happened to fall well: noise that
does not come back on new data. :func:`smoothed` replaces every recorded outcome of a
model by a calibrated estimate of its probability, given what a cascade can know about
that query: the model's own confidence signals, the other models' signals, and which
other models gave the same answer. A deferral rule decides from those same things, so
the expected quality of every cascade is unchanged (a calibrated estimate has the
outcome's mean given what it conditions on) while most of the outcome noise is gone;
the search and its cross-validation then compare cascades on their merits.

Per model: a logistic regression (L2 penalty, standardised features) fitted on the rows.
Models that gave the same answer on a row then share one estimate, the mean of theirs
(the same answer is right or wrong whoever gave it). Estimates are rounded to steps of
``1/steps`` (near-identical cascades then tie, and the frontier stays as short as with 0/1
outcomes). Answers missing from the log stay 0; a log whose quality is a graded score (not
0/1) is left as it is.

Measured on the chain logs (``benchmarks/replay.py``, 5-fold outer CV, 2 draws, chain
logs only): at ``--min-quality top`` a mean relative cost of 0.774 at -0.57 points (worst
-1.3) against 0.785 at -0.70 (worst -2.0) with 0/1 outcomes; the held-out error–cost area
6.2% above the hindsight ceiling (7.3% before), below the plain grid on 9 of 10 logs (3).
One estimate per answer (13 chain and RouterBench logs, 2 draws): 0.837 at -0.41 points
against 0.810 at -0.55 with one estimate per model (worst -1.7 both).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING

import numpy as np

from tiered.core.signals import higher_is_confident
from tiered.replay.view import LogView

if TYPE_CHECKING:
    from tiered.calibrate.calibrator import Calibration, FrontierPoint

STRENGTH = 1.0  # inverse L2 penalty of the logistic regressions (sklearn's C)
STEPS = 50  # probabilities rounded to multiples of 1/STEPS
# equal answers share one estimate unless more of their pairs than this differ in quality
MAX_SPLIT = 0.01


def _spread(name: str, values: np.ndarray) -> np.ndarray:
    """A signal as a feature: log-probabilities as -log(1 - p) (confident answers spread
    out instead of crowding at 0), every signal oriented so that higher is confident."""
    v = np.asarray(values, dtype=float)
    if name == "logprob":
        return -np.log1p(-np.clip(np.exp(v), 0.0, 1.0 - 1e-6))
    return v if higher_is_confident(name) else -v


def features(view: LogView, j: int) -> np.ndarray:
    """What a cascade can know about model ``j``'s answer on each row (see the module doc)."""
    cols = []
    for name in sorted(view.signals):
        values = view.signals[name]
        if not np.isfinite(values).any():
            continue
        for k in range(view.m):
            x = _spread(name, values[:, k])
            missing = ~np.isfinite(x)
            x[missing] = float(np.median(x[~missing])) if (~missing).any() else 0.0
            cols.append(x)
            if k == j:
                cols.append(missing.astype(float))
    codes = view.codes[view.best_extract()]
    for k in range(view.m):
        if k != j:
            cols.append(((codes[:, j] == codes[:, k]) & (codes[:, j] >= 0)).astype(float))
    return np.column_stack(cols) if cols else np.zeros((view.n, 0))


def smoothed_quality(view: LogView, strength: float = STRENGTH, steps: int = STEPS) -> np.ndarray:
    """The view's quality matrix with each model's 0/1 outcomes replaced by estimates."""
    from sklearn.linear_model import LogisticRegression

    quality = view.quality.copy()
    if not np.isin(view.quality, (0.0, 1.0)).all():
        return quality  # graded scores: nothing to smooth this way
    for j in range(view.m):
        ok = view.answered[:, j]
        y = view.quality[ok, j] > 0.5
        X = features(view, j)[ok]
        if X.shape[1] == 0 or y.all() or not y.any():
            continue
        sd = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a rare non-convergence still gives usable odds
            model = LogisticRegression(C=strength, max_iter=2000).fit(X, y)
        quality[ok, j] = model.predict_proba(X)[:, 1]
    return np.round(_same_answer_same_chance(view, quality) * steps) / steps


def _same_answer_same_chance(view: LogView, estimates: np.ndarray) -> np.ndarray:
    """Each estimate replaced by the mean over the models that gave the same answer on that
    row: one answer is right or wrong whoever gave it, so the recorded outcomes of equal
    answers are equal, and their estimates must be too. Left to each model's own fit, a
    cheap model agreeing with the top one was rated below it on the very rows where their
    outcomes are the same (0.3–1 point on the chain logs): noise in every comparison of a
    cascade with the top model, on rows where the two cannot differ.

    Only where the log bears it out: when more than ``MAX_SPLIT`` of the recorded pairs of
    equal answers differ in quality (answers compared by an extracted part, such as code
    compared by its final number but graded by tests), equal answers are not the same
    answer, and each model keeps its own estimate."""
    codes = view.codes[view.best_extract()]
    valid = (codes >= 0) & view.answered
    same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    split = view.quality[:, :, None] != view.quality[:, None, :]
    if (same & split).sum() > MAX_SPLIT * max(int(same.sum()) - int(valid.sum()), 1):
        return estimates
    members = same.sum(axis=2)
    pooled = np.einsum("ijk,ik->ij", same, estimates) / np.maximum(members, 1)
    return np.where(members > 1, pooled, estimates)


def smoothed(view: LogView, strength: float = STRENGTH, steps: int = STEPS) -> LogView:
    """``view`` with smoothed quality (the calibrator searches and cross-validates on it)."""
    return dataclasses.replace(view, quality=smoothed_quality(view, strength, steps))


def recorded(cal: Calibration, view: LogView) -> Calibration:
    """``cal``, fitted on smoothed quality, with its fitted-log numbers (frontier, chosen
    point, single models, the target) replayed on the recorded outcomes of ``view``: what
    ``tiered eval`` shows on that log. Its cross-validation stays in smoothed estimates."""
    from tiered.calibrate.evaluate import evaluate_stages

    done: dict[int, FrontierPoint] = {}

    def redo(p: FrontierPoint) -> FrontierPoint:
        got = done.get(id(p.config))
        if got is None:
            out = evaluate_stages(view, p.config.stage_refs(view.models))
            got = done[id(p.config)] = dataclasses.replace(
                p, cost=out.mean_cost, quality=out.mean_quality
            )
        return got

    top, top_q, top_c = view.top()
    q = cal.objective.min_quality
    note = (
        "chosen on smoothed outcomes (each right/wrong replaced by its estimated chance); "
        "numbers on the fitted log are the recorded ones, cross-validation's are estimates"
    )
    return dataclasses.replace(
        cal,
        frontier=[redo(p) for p in cal.frontier],
        chosen=redo(cal.chosen),
        singles=[redo(p) for p in cal.singles],
        top_model=view.models[top],
        top_quality=top_q,
        top_cost=top_c,
        target=None if q is None else q.resolve(top_q),
        notes=[*cal.notes, note],
    )


__all__ = ["MAX_SPLIT", "STEPS", "STRENGTH", "features", "recorded", "smoothed", "smoothed_quality"]
