"""The one-line verdict of a calibration: what to use, and why.

The frontier and the chosen cascade answer "what is possible on this log"; a person also
needs "what should I do". :func:`verdict` says it in one line, from what the calibration
measured on held-out folds rather than on the rows it was fitted on:

- a cascade: how much it saves held out, and at what quality;
- the best model alone, because no cascade reaches the target for less, or because the
  cheaper ones that did on the fitted rows lost quality in cross-validation (saying how
  much), with the nearest relaxed target that does pay off, if any;
- a cheaper single model, when it alone meets a lower target;
- "not worth a cascade" when the saving is below ``min_saving``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tiered.calibrate.calibrator import Calibration

# relaxed targets offered when the best model alone is the answer at ``top``
RELAXED = ("top-0.01", "top-0.02")
DEFAULT_MIN_SAVING = 0.05

Kind = Literal["cascade", "model", "top_alone", "not_worth"]


@dataclass(frozen=True, slots=True)
class Alternative:
    """A relaxed target and what cross-validation says it gives."""

    min_quality: str
    relative_cost: float  # held out, against the best model alone
    delta: float  # held-out quality minus the best model's, in points


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to use (``kind``) and the line that says it and why."""

    kind: Kind
    line: str
    alternative: Alternative | None = None


def _name(cal: Calibration) -> str:
    return cal.chosen.stages[-1] if len(cal.chosen.stages) == 1 else "the cascade"


def _held_out(cal: Calibration) -> tuple[float, float] | None:
    """(relative cost, Δ points) of the chosen point held out, if cross-validated."""
    cv = cal.cv
    if cv is None or not (cv.top_cost > 0):
        return None
    return cv.cost / cv.top_cost, 100 * (cv.quality - cv.top_quality)


def fitted_best(cal: Calibration) -> tuple[float, float | None] | None:
    """The cheapest cascade meeting the objective on the fitted rows: (its relative cost
    there, how many points its held-out quality fell short of the target, if
    cross-validated); None if it is a single model."""
    if cal.objective.budget is not None or cal.target is None or cal.top_cost <= 0:
        return None
    target = cal.target
    ok = [p for p in cal.frontier if p.quality >= target - 1e-9]
    if not ok:
        return None
    best = min(ok, key=lambda p: (p.cost, -p.quality))
    if len(best.stages) == 1:
        return None
    rel = best.cost / cal.top_cost
    cv = cal.cv
    if cv is None:
        return rel, None
    got = cv.held_out.get(best.config.structure)
    ref = cv.reference_quality
    if got is None or ref is None:
        return rel, None
    return rel, 100 * (ref - got[0])


def alternatives(cal: Calibration, targets: Sequence[str] = RELAXED) -> list[Alternative]:
    """Relaxed targets whose cross-validated choice is a cascade (cheapest first offered)."""
    from tiered.errors import ConfigError

    out = []
    for t in targets:
        try:
            other = cal.with_objective(min_quality=t)
        except ConfigError:
            continue
        got = _held_out(other)
        if got is not None and len(other.chosen.stages) > 1:
            out.append(Alternative(t, *got))
    return out


def verdict(
    cal: Calibration,
    *,
    min_saving: float = DEFAULT_MIN_SAVING,
    relaxed: Sequence[str] = RELAXED,
    family: str | None = None,
) -> Verdict:
    """The one-line recommendation for ``cal`` (see the module doc)."""
    top = cal.top_model
    chosen = cal.chosen
    held = _held_out(cal)
    how = "" if family in (None, "confidence") else f" ({family} rules)"
    if cal.objective.budget is not None:
        what = chosen.stages[0] if len(chosen.stages) == 1 else f"the cascade{how}"
        q = f"quality {100 * chosen.quality:.1f}% on the fitted log"
        if held is not None:
            q += f", {held[1]:+.1f} points against {top} in cross-validation"
        return Verdict(
            "model" if len(chosen.stages) == 1 else "cascade",
            f"use {what}: the best quality within ${cal.objective.budget:.4g} per query ({q})",
        )
    target = cal.objective.min_quality.text if cal.objective.min_quality else "the target"
    if len(chosen.stages) > 1:
        rel, d = held if held is not None else (cal.relative_cost, 0.0)
        where = "in cross-validation" if held is not None else "on the fitted log"
        if 1.0 - rel < min_saving:
            return Verdict(
                "not_worth",
                f"not worth a cascade: the best one saves only {100 * (1 - rel):.1f}% {where} "
                f"(less than {100 * min_saving:.0f}%): use {top} alone",
            )
        fit = f"; {cal.relative_cost:.2f}× on the fitted log" if held is not None else ""
        return Verdict(
            "cascade",
            f"use the cascade{how}: {rel:.2f}× the cost of {top} at {d:+.1f} points against "
            f"it {where} ({target}{fit})",
        )
    if chosen.stages[0] != top:
        extra = "" if held is None else f" ({held[1]:+.1f} points against {top} held out)"
        return Verdict(
            "model",
            f"use {chosen.stages[0]} alone: it meets {target} at "
            f"{cal.relative_cost:.2f}× the cost of {top}{extra}",
        )
    best = fitted_best(cal)
    if best is None:
        why = f"no cascade meets {target} for less than {top} on this log"
    elif best[0] > 1.0 - min_saving:
        why = (
            f"the cheapest cascade meeting {target} on the fitted log saves only "
            f"{100 * (1 - best[0]):.1f}% (less than {100 * min_saving:.0f}%)"
        )
    else:
        met = f"cheaper cascades met {target} on the fitted log ({best[0]:.2f}× the cost)"
        if best[1] is None:
            why = f"{met} but were not cross-validated"
        elif best[1] <= 0:
            why = f"{met} but did not hold up in cross-validation"
        elif target == "top":
            why = f"{met} but lost {best[1]:.1f} points in cross-validation"
        else:
            why = f"{met} but fell {best[1]:.1f} points short of it in cross-validation"
    line = f"{why}: use {top} alone"
    alt = next((a for a in alternatives(cal, relaxed) if a.relative_cost <= 1.0 - min_saving), None)
    if alt is not None and math.isfinite(alt.relative_cost):
        line += (
            f", or accept --min-quality {alt.min_quality} for {alt.relative_cost:.2f}× the "
            f"cost ({alt.delta:+.1f} points held out)"
        )
    return Verdict("top_alone", line, alt)


__all__ = ["DEFAULT_MIN_SAVING", "Alternative", "Verdict", "alternatives", "fitted_best", "verdict"]
