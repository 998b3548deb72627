"""The learned scorer as a rule family of the offline calibrator (FrugalGPT's search).

>>> from tiered.calibrate import calibrate, default_families           # doctest: +SKIP
>>> cal = calibrate(log, min_quality="top",
...                 families=lambda v: [*default_families(v), ScorerFamily()])  # doctest: +SKIP

``prepare`` fits a :class:`~tiered.calibrate.learned.estimator.QualityEstimator` on the rows the
calibrator searches on; candidates are ``scorer`` rules with thresholds at quantiles of
the post-hoc P(correct). On those rows the estimator scores each query with the fold
learner that did not see it (cross-fitting), so the search sees held-out quality, and
the evaluator, running the same rule, sees the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tiered.calibrate.families import (
    DEFAULT_SHARES,
    Candidate,
    RuleFamily,
    default_families,
    short_between,
)
from tiered.calibrate.learned.estimator import QualityEstimator, normalise
from tiered.calibrate.learned.rules import ScorerThreshold
from tiered.replay.view import LogView


@dataclass
class ScorerFamily(RuleFamily):
    """Accept when the post-hoc P(correct | query, answer, earlier answers) >= a threshold."""

    make: Callable[[], QualityEstimator] = field(default=lambda: QualityEstimator(folds=3))
    shares: tuple[float, ...] = DEFAULT_SHARES
    refine_width: int = 6
    name: str = "scorer"
    uses_earlier: bool = True
    estimator: QualityEstimator | None = field(default=None, repr=False)
    _static: dict[int, sp.csr_matrix] = field(default_factory=dict, repr=False)
    _scores: dict[tuple[int, tuple[int, ...]], np.ndarray] = field(default_factory=dict, repr=False)
    _view: LogView | None = field(default=None, repr=False)

    def prepare(self, view: LogView) -> None:
        self.estimator = self.make().fit(view.log, rows=view.rows)
        self._view = view
        self._static.clear()
        self._scores.clear()

    def scores(self, view: LogView, model: int, earlier: tuple[int, ...]) -> np.ndarray:
        """Post-hoc P(correct) of ``model`` on every row, after ``earlier`` ran."""
        est = self.estimator
        if est is None:
            raise RuntimeError("ScorerFamily.prepare() was not called")
        key = (model, tuple(earlier))
        if view is self._view and key in self._scores:
            return self._scores[key]
        items = view.items()
        name = view.models[model]
        j = est.index(name)
        static = self._static.get(model) if view is self._view else None
        if static is None:
            static = est.posthoc_static(items, j, view.answers(model), est.exante(items))
            if view is self._view:
                self._static[model] = static
        prev = {
            est.index(view.models[e]): normalise(view.labels(e), view.models[e], est.extract)
            for e in earlier
        }
        agree = est.agreement(j, normalise(view.labels(model), name, est.extract), prev)
        X = sp.hstack([static, sp.csr_matrix(agree, dtype=np.float32)], format="csr")
        p = est.posthoc_heads[j].predict(X, est._folds(items))
        if view is self._view:
            self._scores[key] = p
        return p

    def _make(
        self, view: LogView, model: int, p: np.ndarray, thresholds: Sequence[float]
    ) -> list[Candidate]:
        assert self.estimator is not None
        ok = view.answered[:, model]
        out = []
        for t in sorted(set(thresholds)):
            rule = ScorerThreshold(threshold=t).with_estimator(self.estimator)
            out.append(Candidate(rule, (p >= t) & ok, self.name, f"{self.name}@{t!r}", t))
        return out

    def _cuts(self, u: np.ndarray, ks: np.ndarray) -> list[float]:
        return [short_between(float(u[k - 1]), float(u[k])) for k in ks.tolist() if 0 < k < len(u)]

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        p = self.scores(view, model, earlier)
        ok = view.answered[:, model]
        u = np.unique(p[ok])
        if len(u) < 2:
            return []
        ks = np.searchsorted(u, np.quantile(p[ok], 1 - np.asarray(self.shares)), side="left")
        return self._make(view, model, p, self._cuts(u, np.unique(ks)))

    def refine(
        self, view: LogView, model: int, earlier: tuple[int, ...], cand: Candidate
    ) -> list[Candidate]:
        if not math.isfinite(cand.param):
            return []
        p = self.scores(view, model, earlier)
        u = np.unique(p[view.answered[:, model]])
        k = int(np.searchsorted(u, cand.param))
        w = self.refine_width
        ks = np.arange(max(k - w, 1), min(k + w + 1, len(u)))
        got = [t for t in self._cuts(u, ks) if t != cand.param]
        return self._make(view, model, p, got)


def with_scorer(view: LogView) -> list[RuleFamily]:
    """The calibrator's default families plus the learned scorer (a ``families=`` factory)."""
    return [*default_families(view), ScorerFamily()]


__all__ = ["ScorerFamily", "with_scorer"]
