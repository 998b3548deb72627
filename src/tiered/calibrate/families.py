"""Rule families: the kinds of deferral rule the calibrator tries for a stage, with their grids.

A family turns "model ``j`` at a stage after models ``earlier``" into a list of
:class:`Candidate` s: a concrete :class:`~tiered.core.rules.DeferralRule` and its accept
mask on the view's rows. The search only ever looks at masks, so a new kind of rule (a
learned quality scorer, a pre-generation gate) joins the search by adding a family:
subclass :class:`RuleFamily`, implement :meth:`~RuleFamily.candidates` (and optionally
:meth:`~RuleFamily.refine` and :meth:`~RuleFamily.prepare`, which sees the training rows
first), and pass it in ``families=``. The rule a family returns must decide each query
from that query alone (as every built-in rule does): the evaluator runs it once on a whole
column.

Built-in families (:func:`default_families` picks those the log supports):

- ``threshold:<signal>``: accept when the signal is at or above (below, for entropy) a
  threshold; thresholds from a grid of accept shares, refined between neighbouring
  recorded values.
- ``window:<signal>``: pass on only when the signal lies in a band [lo, hi].
- ``vote``: accept when at least ``min_share`` of the k samples agree (Mixture-of-Thought).
- ``agreement``: accept when this stage's answer equals an earlier stage's (or ``k`` of
  them); this is what makes logs without confidences cascadable.
- ``any_of``/``all_of``: a threshold-like family combined with agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tiered.core.rules import (
    Agreement,
    AllOf,
    AnyOf,
    DeferralRule,
    Never,
    Threshold,
    Vote,
    Window,
)
from tiered.core.signals import higher_is_confident
from tiered.replay.view import LogView

# Signals whose direction is known; others are tried both ways.
KNOWN_SIGNALS = frozenset({"logprob", "max_prob", "margin", "entropy", "vote", "score"})

# Accept shares the threshold grid aims at (refinement fills in between).
DEFAULT_SHARES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One concrete rule for a stage and the queries (rows of the view) it accepts."""

    rule: DeferralRule
    mask: np.ndarray
    family: str
    key: str
    param: float = math.nan  # the scalar a family refines around (a threshold)


def never_candidate(n: int) -> Candidate:
    """A stage that answers nothing: it only feeds later stages' agreement checks."""
    return Candidate(Never(), np.zeros(n, dtype=bool), "never", "never")


class RuleFamily:
    """A kind of deferral rule and how to enumerate its parameters on a log."""

    name: str = "family"
    uses_earlier: bool = False  # its masks depend on which models ran before

    def prepare(self, view: LogView) -> None:
        """Called once with the rows the search fits on (learned families train here)."""

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        raise NotImplementedError

    def refine(
        self, view: LogView, model: int, earlier: tuple[int, ...], cand: Candidate
    ) -> list[Candidate]:
        """Candidates near ``cand`` (a finer grid around its parameter); none by default."""
        return []


def short_between(a: float, b: float) -> float:
    """A short decimal strictly between ``a < b`` (readable thresholds in YAML)."""
    mid = a + (b - a) / 2
    for digits in range(1, 18):
        r = float(f"{mid:.{digits}g}")
        if a < r < b:
            return r
    return mid


@dataclass
class _Sorted:
    values: np.ndarray  # the signal on every row (NaN where absent)
    ok: np.ndarray  # rows with a usable answer and a finite signal
    distinct: np.ndarray  # sorted distinct values on ok rows


def _sorted_signal(view: LogView, signal: str, j: int) -> _Sorted:
    values = view.signals[signal][:, j]
    ok = view.answered[:, j] & np.isfinite(values)
    return _Sorted(values, ok, np.unique(values[ok]))


@dataclass
class ThresholdFamily(RuleFamily):
    """Accept when ``signal`` is at or above a threshold (at or below, ``direction='below'``)."""

    signal: str
    direction: str = "above"
    shares: tuple[float, ...] = DEFAULT_SHARES
    refine_width: int = 8

    def __post_init__(self) -> None:
        natural = "above" if higher_is_confident(self.signal) else "below"
        self.name = f"threshold:{self.signal}" + (
            "" if self.direction == natural else ":" + self.direction
        )
        self._natural = natural

    def _sorted(self, view: LogView, j: int) -> _Sorted:
        return _sorted_signal(view, self.signal, j)

    def _index_thresholds(self, u: np.ndarray, ks: np.ndarray) -> list[float]:
        """Threshold just below ``u[k]`` (above) or just above it (below), per index."""
        out = []
        for k in ks.tolist():
            if self.direction == "above":
                if 0 < k < len(u):
                    out.append(short_between(float(u[k - 1]), float(u[k])))
            elif 0 <= k < len(u) - 1:
                out.append(short_between(float(u[k]), float(u[k + 1])))
        return out

    def mask(self, view: LogView, j: int, thresholds: list[float]) -> np.ndarray:
        s = self._sorted(view, j).values
        t = np.asarray(thresholds, dtype=float)[:, None]
        with np.errstate(invalid="ignore"):
            m = s[None, :] >= t if self.direction == "above" else s[None, :] <= t
        return m & view.answered[None, :, j]

    def rule(self, threshold: float) -> DeferralRule:
        direction = None if self.direction == self._natural else self.direction
        return Threshold(signal=self.signal, threshold=threshold, direction=direction)  # type: ignore[arg-type]

    def _make(self, view: LogView, j: int, thresholds: list[float]) -> list[Candidate]:
        thresholds = sorted(set(thresholds))
        if not thresholds:
            return []
        masks = self.mask(view, j, thresholds)
        return [
            Candidate(self.rule(t), masks[i], self.name, f"{self.name}@{t!r}", t)
            for i, t in enumerate(thresholds)
        ]

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        srt = self._sorted(view, model)
        u = srt.distinct
        if len(u) < 2:
            return []
        v = srt.values[srt.ok]
        shares = np.asarray(self.shares)
        if self.direction == "above":
            ks = np.searchsorted(u, np.quantile(v, 1 - shares), side="left")
        else:
            ks = np.searchsorted(u, np.quantile(v, shares), side="right") - 1
        return self._make(view, model, self._index_thresholds(u, np.unique(ks)))

    def refine(
        self, view: LogView, model: int, earlier: tuple[int, ...], cand: Candidate
    ) -> list[Candidate]:
        u = self._sorted(view, model).distinct
        if len(u) < 2 or not math.isfinite(cand.param):
            return []
        k = int(np.searchsorted(u, cand.param))
        w = self.refine_width
        ks = np.arange(max(k - w, 0), min(k + w + 1, len(u)))
        got = self._index_thresholds(u, ks)
        return self._make(view, model, [t for t in got if t != cand.param])


@dataclass
class VoteFamily(RuleFamily):
    """Accept when at least ``min_share`` of the samples equal their majority answer."""

    name: str = "vote"

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        if "vote" not in view.signals:
            return []
        srt = _sorted_signal(view, "vote", model)
        shares = srt.distinct[1:]  # the lowest share would accept every sampled answer
        with np.errstate(invalid="ignore"):
            masks = (srt.values[None, :] >= shares[:, None]) & view.answered[None, :, model]
        return [
            Candidate(Vote(min_share=float(s)), masks[i], self.name, f"vote@{s!r}", float(s))
            for i, s in enumerate(shares.tolist())
        ]


@dataclass
class WindowFamily(RuleFamily):
    """Pass on only items whose ``signal`` lies in [lo, hi] (Window-Based Early-Exit)."""

    signal: str
    lo_shares: tuple[float, ...] = (0.05, 0.15, 0.3)
    hi_shares: tuple[float, ...] = (0.4, 0.55, 0.7, 0.85, 0.95)

    def __post_init__(self) -> None:
        self.name = f"window:{self.signal}"

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        srt = _sorted_signal(view, self.signal, model)
        u = srt.distinct
        if len(u) < 4:
            return []
        v = srt.values[srt.ok]

        def cut(share: float) -> float | None:
            k = int(np.searchsorted(u, np.quantile(v, share), side="left"))
            return short_between(float(u[k - 1]), float(u[k])) if 0 < k < len(u) else None

        pairs = []
        for a in self.lo_shares:
            for b in self.hi_shares:
                lo, hi = cut(a), cut(b)
                if lo is not None and hi is not None and lo < hi:
                    pairs.append((lo, hi))
        out = []
        ans = view.answered[:, model]
        for lo, hi in sorted(set(pairs)):
            with np.errstate(invalid="ignore"):
                mask = ((srt.values < lo) | (srt.values > hi)) & ans
            rule = Window(signal=self.signal, lo=lo, hi=hi)
            out.append(Candidate(rule, mask, self.name, f"{self.name}@{lo!r},{hi!r}"))
        return out


@dataclass
class AgreementFamily(RuleFamily):
    """Accept when at least ``k`` earlier stages gave the same answer (k = 1..max_agree).

    ``extract`` compares part of each answer (see :class:`~tiered.core.rules.Agreement`);
    ``"auto"`` takes the extractor under which the log's models agree most.
    """

    max_agree: int = 2
    extract: str | None = "auto"
    name: str = "agreement"
    uses_earlier: bool = True

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        if not earlier:
            return []
        extract = view.best_extract() if self.extract == "auto" else self.extract
        count = view.agree_count(model, earlier, extract)
        names = [view.models[e] for e in earlier]
        out = []
        for k in range(1, min(self.max_agree, len(earlier)) + 1):
            mask = (count >= k) & view.answered[:, model]
            if not mask.any():
                break
            rule = Agreement(stages=names, min_agree=k, extract=extract)  # type: ignore[arg-type]
            key = f"agreement>={k}[{extract}]:{','.join(names)}"
            out.append(Candidate(rule, mask, self.name, key))
        return out


@dataclass
class CombinedFamily(RuleFamily):
    """``base`` combined with agreement with any earlier stage: ``any_of`` or ``all_of``."""

    base: RuleFamily
    how: str = "any_of"
    uses_earlier: bool = True

    def __post_init__(self) -> None:
        self.name = f"{self.how}({self.base.name},agreement)"
        self._agree = AgreementFamily(max_agree=1)

    def prepare(self, view: LogView) -> None:
        self.base.prepare(view)

    def _combine(
        self, view: LogView, model: int, earlier: tuple[int, ...], bases: list[Candidate]
    ) -> list[Candidate]:
        agree = self._agree.candidates(view, model, earlier)
        if not agree or not bases:
            return []
        a = agree[0]
        out = []
        for b in bases:
            if self.how == "any_of":
                rule: DeferralRule = AnyOf(rules=[b.rule, a.rule])
                mask = b.mask | a.mask
            else:
                rule = AllOf(rules=[b.rule, a.rule])
                mask = b.mask & a.mask
            out.append(Candidate(rule, mask, self.name, f"{self.how}({b.key},{a.key})", b.param))
        return out

    def candidates(self, view: LogView, model: int, earlier: tuple[int, ...]) -> list[Candidate]:
        if not earlier:
            return []
        return self._combine(view, model, earlier, self.base.candidates(view, model, earlier))

    def refine(
        self, view: LogView, model: int, earlier: tuple[int, ...], cand: Candidate
    ) -> list[Candidate]:
        inner = Candidate(cand.rule, cand.mask, self.base.name, cand.key, cand.param)
        return self._combine(view, model, earlier, self.base.refine(view, model, earlier, inner))


def default_families(view: LogView) -> list[RuleFamily]:
    """The built-in families the log supports (its signals, samples and answers)."""
    fams: list[RuleFamily] = []
    scalar: list[RuleFamily] = []
    for s in sorted(view.signals):
        if s == "vote":
            scalar.append(VoteFamily())
            continue
        natural = "above" if higher_is_confident(s) else "below"
        scalar.append(ThresholdFamily(s, natural))
        if s not in KNOWN_SIGNALS:
            scalar.append(ThresholdFamily(s, "below" if natural == "above" else "above"))
        fams.append(WindowFamily(s))
    fams = scalar + fams
    fams.append(AgreementFamily())
    for base in scalar:
        fams.append(CombinedFamily(base, "any_of"))
        fams.append(CombinedFamily(base, "all_of"))
    return fams


__all__ = [
    "DEFAULT_SHARES",
    "AgreementFamily",
    "Candidate",
    "CombinedFamily",
    "RuleFamily",
    "ThresholdFamily",
    "VoteFamily",
    "WindowFamily",
    "default_families",
    "never_candidate",
    "short_between",
]
