"""Certified calibration: a cascade whose quality on new data is promised, not hoped for.

Thresholds tuned on a log look better on it than on new data. :func:`certify` makes the
quality target a guarantee with *Learn then Test* (Angelopoulos et al., 2021):

1. **Split.** The log's rows are shuffled (``seed``) into a *fitting* part
   (``fit_share``) and a disjoint *certification* part.
2. **Learn.** The search runs on the fitting part only. Its Pareto frontier, ordered
   from the most expensive (most conservative) cascade down to the cheapest, is the
   candidate sequence, fixed before the certification rows are looked at.
3. **Test.** Each candidate in turn is replayed on the certification rows and tested
   against the null "its quality is below the target less ``tolerance``"
   (:mod:`tiered.calibrate.certify_stats`): an exact binomial test for an absolute
   target on 0/1 quality; for ``top``, ``top-x`` and ``top*c`` a *paired* test on the
   per-row difference ``q_cascade - q_j`` (``- c q_j``) with *every* model ``j`` of the
   log, by betting, passed only when it passes against each of them (an
   intersection–union test: no correction is needed, and the promise is against the
   best model whichever it is, not against one picked on a few rows); the betting test
   too for scores in [0, 1]. The first candidate that fails stops the sequence
   (*fixed-sequence testing*): every candidate before it is certified, and the cheapest
   of them is chosen.

**The promise.** If the log's rows are exchangeable with the data the cascade will see
(i.i.d. draws from one distribution), then with probability at least ``confidence``
over the draw of the log, the chosen cascade's expected quality on that distribution is
at least the target less ``tolerance`` (a relative target: at least that much below
every model's, on the same data, so below the best one's). Testing in a fixed order
spends the whole error budget on the first false claim, so there is no multiplicity
correction to pay.

The candidates are the frontier's cascades cheaper than the fitting part's best model.
When none is certified (or the log's best single model is cheaper than those that are),
the log's best single model alone is the answer (the model a relative target is
relative to) and
:attr:`Certificate.rows_needed` estimates how many rows a log would need for a cheaper
cascade to pass, from the certification rows' own statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tiered.calibrate.calibrator import Calibration, _point
from tiered.calibrate.certificate import Certificate
from tiered.calibrate.certify_stats import betting_pvalue, binomial_pvalue, rows_needed
from tiered.calibrate.evaluate import evaluate_stages
from tiered.calibrate.families import RuleFamily, default_families
from tiered.calibrate.objective import Objective, QualityTarget
from tiered.calibrate.search import Config, Point, SearchSettings, search
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog
from tiered.replay.view import LogView

FamilyFactory = Callable[[LogView], Sequence[RuleFamily]]

DEFAULT_TOLERANCE = 0.005
DEFAULT_FIT_SHARE = 0.3  # the search needs fewer rows than a paired test (measured)


@dataclass(frozen=True, slots=True)
class RowTest:
    """How a quality target is tested: the per-row statistic ``X`` (:meth:`rows`), the
    null mean ``mu0`` it must beat, its range, and the test used."""

    target: QualityTarget
    mu0: float
    lo: float
    hi: float
    name: str
    binary: bool

    @classmethod
    def of(cls, q: QualityTarget, tolerance: float, binary: bool) -> RowTest:
        """``binary``: qualities are 0/1 (an absolute target then gets the exact test)."""
        if q.kind == "absolute":
            name = "exact binomial" if binary else "betting"
            return cls(q, q.value - tolerance, 0.0, 1.0, name, binary)
        if q.kind == "top-":
            return cls(q, -q.value - tolerance, -1.0, 1.0, "paired betting", False)
        return cls(q, -tolerance, -q.value, 1.0, "paired betting", False)

    def rows(self, cascade: np.ndarray, top: np.ndarray) -> np.ndarray:
        """Per-row ``X`` from the cascade's and the top model's qualities on those rows."""
        if self.target.kind == "absolute":
            return cascade
        if self.target.kind == "top-":
            return np.asarray(cascade - top, dtype=float)
        return np.asarray(cascade - self.target.value * top, dtype=float)

    def rows_each(self, cascade: np.ndarray, models: np.ndarray) -> np.ndarray:
        """``X`` against each model: one row per column of ``models`` (``(n, m)``
        qualities); an absolute target has no reference, so its one row."""
        if self.target.kind == "absolute":
            return cascade
        return np.stack([self.rows(cascade, models[:, j]) for j in range(models.shape[1])])

    def pvalue(self, x: np.ndarray) -> float:
        if x.ndim == 2:
            # paired with every model: the claim "at least as good as each of them, less the
            # target's slack" fails if it fails for one, so its p-value is the largest
            # (an intersection-union test: valid at the same level, nothing to correct)
            return max(self.pvalue(row) for row in x)
        if self.binary:
            return binomial_pvalue(round(float(x.sum())), len(x), self.mu0)
        return betting_pvalue(x, self.mu0, self.lo, self.hi)

    def rows_needed(self, x: np.ndarray, delta: float) -> float:
        return rows_needed(binding(x), self.mu0, self.lo, delta, binary=self.binary)


def binding(x: np.ndarray) -> np.ndarray:
    """The row of ``X`` (one per model) the claim is closest to failing on."""
    return x[int(np.argmin(x.mean(axis=1)))] if x.ndim == 2 else x


def fixed_sequence(candidates: Iterable[np.ndarray], test: RowTest, delta: float) -> list[float]:
    """Fixed-sequence testing: the p-values of the candidates (their per-row ``X``, most
    conservative first) up to and excluding the first one above ``delta``. Every
    candidate returned is certified; the family-wise error is at most ``delta``, because
    a false claim can only be made by passing the first candidate whose null is true."""
    passed: list[float] = []
    for x in candidates:
        p = test.pvalue(x)
        if p > delta:
            break
        passed.append(p)
    return passed


class CertifySession:
    """The split and the fitting search of one certified calibration; :meth:`decide` tests
    the candidates for an objective (cheap: the search is not rerun)."""

    def __init__(
        self,
        view: LogView,
        *,
        confidence: float,
        tolerance: float = DEFAULT_TOLERANCE,
        fit_share: float = DEFAULT_FIT_SHARE,
        seed: int = 0,
        settings: SearchSettings | None = None,
        families: FamilyFactory | None = None,
    ) -> None:
        _check(confidence, tolerance, fit_share)
        started = time.perf_counter()
        self.view = view
        self.confidence = float(confidence)
        self.tolerance = float(tolerance)
        n = view.n
        n_fit = round(fit_share * n)
        if n_fit < 1 or n - n_fit < 1:
            raise ConfigError(
                f"cannot certify on {n} rows: the fitting and certification parts both need rows",
                field="confidence",
            )
        order = np.random.default_rng(seed).permutation(n)
        self.fit = view.take(np.sort(order[:n_fit]))
        self.cert = view.take(np.sort(order[n_fit:]))
        self.result = search(self.fit, (families or default_families)(self.fit), settings)
        # the candidates are cheaper than the fitting part's best model (fixed before the
        # certification rows are looked at); the answer when none passes is the log's best
        self.top, _, self.top_fit_cost = self.fit.top()
        self.best = view.top()[0]
        q = self.cert.quality
        self.binary = bool(np.isin(q, (0.0, 1.0)).all())
        self._scored: dict[int, np.ndarray] = {}
        self.search_seconds = time.perf_counter() - started

    def _quality(self, config: Config) -> np.ndarray:
        """Per-row quality of a fitted cascade on the certification rows (cached)."""
        got = self._scored.get(id(config))
        if got is None:
            out = evaluate_stages(self.cert, config.stage_refs(self.cert.models))
            got = self._scored[id(config)] = np.nan_to_num(out.quality, nan=0.0)
        return got

    def _cheaper(self, p: Point) -> bool:
        """Cheaper than the top model on the fitting rows (beyond rounding)."""
        return p.cost < self.top_fit_cost * (1.0 - 1e-9)

    def candidates(self, q: QualityTarget) -> list[Point]:
        """The fixed sequence: most expensive first. For a relative target, the cascades
        cheaper than the fitting part's best model (chosen before the certification rows
        are read; the answer when none passes is the log's best model, untested)."""
        alone = self.result.singles[self.top].config
        pts = [p for p in self.result.frontier if p.config.key != alone.key]
        if q.relative:
            pts = [p for p in pts if self._cheaper(p)]
        else:
            pts.append(self.result.singles[self.top])  # may fail too: then nothing certifies
        return sorted(pts, key=lambda p: (-p.cost, -p.quality))

    def decide(self, objective: Objective) -> Calibration:
        started = time.perf_counter()
        q = objective.min_quality
        if q is None or objective.budget is not None:
            raise ConfigError(
                "certification needs a quality target (--min-quality) and no --budget",
                field="confidence",
            )
        test = RowTest.of(q, self.tolerance, self.binary)
        delta = 1.0 - self.confidence
        # a relative target is tested against every model, so it promises "as good as the
        # best one", whichever that is (the fitting part's best may be a near-tie's dearer
        # model, or a weaker one, on a small log)
        refs = self.cert.quality
        cands = self.candidates(q)
        rows = (test.rows_each(self._quality(p.config), refs) for p in cands)  # lazily
        passed = fixed_sequence(rows, test, delta)
        chosen = cands[len(passed) - 1] if passed else None
        p_chosen = passed[-1] if passed else None
        tested = min(len(passed) + 1, len(cands))
        top_point = self.result.singles[self.best if q.relative else self.top]
        if q.relative and chosen is not None and chosen.cost >= top_point.cost:
            chosen = p_chosen = None  # the log's best model alone is cheaper
        fallback = chosen is None or chosen.config is top_point.config
        certified = chosen is not None or q.relative
        if chosen is None:
            chosen = top_point
        x_chosen = binding(test.rows_each(self._quality(chosen.config), refs))
        need: float | None = None
        if fallback:
            # what would let a cheaper cascade pass (or, uncertified, the top model itself)
            need = self._rows_needed(test, cands, refs, delta, top_too=not certified)
        cert = Certificate(
            target=q.text,
            kind=q.kind,
            value=q.value,
            confidence=self.confidence,
            tolerance=self.tolerance,
            reference_model=self.view.models[top_point.config.final],
            certified=certified,
            fallback=fallback,
            bound=test.mu0,
            estimate=float(x_chosen.mean()),
            p_value=p_chosen,
            test=test.name,
            rows=self.view.n,
            rows_fit=self.fit.n,
            rows_certify=self.cert.n,
            candidates=len(cands),
            tested=tested,
            rows_needed=need,
            models_compared=self.view.m if q.relative else 0,
        )
        return self._calibration(objective, chosen, cert, time.perf_counter() - started)

    def _rows_needed(
        self, test: RowTest, cands: list[Point], refs: np.ndarray, delta: float, *, top_too: bool
    ) -> float:
        """Log rows at which the most promising candidate cheaper than the top model (or
        the top model too) would pass, were the certification rows' statistics to hold
        (with the same fitting share)."""
        best = math.inf
        alone = self.result.singles[self.top].config.key
        for p in cands:
            if not (self._cheaper(p) or (top_too and p.config.key == alone)):
                continue
            x = test.rows_each(self._quality(p.config), refs)
            best = min(best, test.rows_needed(x, delta))
        share = self.cert.n / self.view.n
        return best / share if math.isfinite(best) else math.inf

    def _calibration(
        self, objective: Objective, chosen: Point, cert: Certificate, seconds: float
    ) -> Calibration:
        from tiered.eval.metrics import oracle_bound

        view = self.view
        # what the chosen cascade does on every row of the log (its thresholds stay the
        # fitted ones: refitting on all rows would void the certificate)
        out = evaluate_stages(view, chosen.config.stage_refs(view.models))
        on_all = Point(chosen.config, out.mean_cost, out.mean_quality)
        top_q = float(view.quality[:, self.best].mean())
        top_c = float(view.cost[:, self.best].mean())
        log = view.log if view.n == len(view.log) else view.log.subset(view.rows)
        oracle = oracle_bound(log)
        assert objective.min_quality is not None
        return Calibration(
            objective=objective,
            target=objective.min_quality.resolve(top_q),
            frontier=[_point(self.fit, p) for p in self.result.frontier],
            chosen=_point(view, on_all),
            singles=[_point(self.fit, p) for p in self.result.singles],
            top_model=view.models[self.best],
            top_quality=top_q,
            top_cost=top_c,
            oracle_quality=oracle.quality,
            oracle_cost=oracle.cost_per_item,
            cv=None,
            n_items=view.n,
            log_path=view.log.path,
            seconds=self.search_seconds + seconds,
            evaluated=self.result.evaluated,
            notes=[
                f"certified calibration: searched on {self.fit.n:,} rows, tested on the other "
                f"{self.cert.n:,}; the frontier shows the fitting rows"
            ],
            session=self,
            certificate=cert,
        )


def check_unit(name: str, value: object, *, low: bool = False, high: bool = False) -> None:
    """Raise a ConfigError unless ``value`` is a number in the unit interval: open at both
    ends, or closed at the end(s) ``low``/``high`` say."""
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v >= 0.0 if low else v > 0.0) and (v <= 1.0 if high else v < 1.0)
    if not ok:
        span = f"{'[' if low else '('}0, 1{']' if high else ')'}"
        raise ConfigError(
            f"The '{name}' parameter must be a number in {span}. Got {value!r} instead.",
            field=name,
        )


def _check(confidence: float, tolerance: float, fit_share: float) -> None:
    check_unit("confidence", confidence)
    check_unit("tolerance", tolerance, low=True)
    check_unit("fit_share", fit_share)


def check_certify_options(
    confidence: float, tolerance: float, budget: float | None, estimators: bool = False
) -> None:
    """Fail early, before a log is read, on options certification cannot honour."""
    _check(confidence, tolerance, DEFAULT_FIT_SHARE)
    if budget is not None:
        raise ConfigError(
            "--confidence certifies a quality target; it does not combine with --budget",
            field="budget",
        )
    if estimators:
        raise ConfigError(
            "--confidence certifies the confidence-rule cascades; it does not combine with "
            "--estimators",
            field="estimators",
        )


def certify(
    log: ReplayLog | LogView,
    min_quality: str | float | QualityTarget = "top",
    *,
    confidence: float = 0.95,
    tolerance: float = DEFAULT_TOLERANCE,
    fit_share: float = DEFAULT_FIT_SHARE,
    seed: int = 0,
    settings: SearchSettings | None = None,
    families: FamilyFactory | None = None,
) -> Calibration:
    """The cheapest cascade certified to reach ``min_quality`` (``top``, ``top-0.01``,
    ``top*0.95`` or a number) less ``tolerance`` on new data with probability
    ``confidence``: search on ``fit_share`` of the rows, test on the rest (see the module
    docstring). The result's ``certificate`` says what was promised."""
    view = log if isinstance(log, LogView) else LogView.of(log)
    if view.n == 0:
        raise ConfigError("cannot calibrate on an empty log", field="log")
    objective = Objective.make(min_quality)
    session = CertifySession(
        view,
        confidence=confidence,
        tolerance=tolerance,
        fit_share=fit_share,
        seed=seed,
        settings=settings,
        families=families,
    )
    return session.decide(objective)


__all__ = [
    "DEFAULT_FIT_SHARE",
    "DEFAULT_TOLERANCE",
    "CertifySession",
    "RowTest",
    "certify",
    "check_certify_options",
    "check_unit",
    "fixed_sequence",
]
