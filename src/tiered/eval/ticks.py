"""Axis ticks for money: as many decimals as the ticks' spacing needs, never an exponent.

A fixed ``$0.00`` format prints $0.025 as "$0.03" (and two ticks alike); matplotlib's log
axis labels minor ticks as "2×10⁻⁵", which overlap. These formatters and locators keep
every label exact and readable.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from matplotlib.ticker import Formatter, LogLocator, NullFormatter


def usd_tick(x: float, step: float) -> str:
    """``x`` dollars with the decimals a tick spacing of ``step`` needs: $0.025, $1.50."""
    if not math.isfinite(x):
        return ""
    if abs(x) < 1e-15:
        return "$0"
    decimals = 2 if step <= 0 else max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(x) >= 1 and decimals == 1:
        decimals = 2  # $1.50, not $1.5
    if abs(x) < 1:
        # small values: enough decimals for three significant digits of the value itself
        decimals = max(decimals, min(12, 2 - math.floor(math.log10(abs(x)))))
    text = f"{abs(x):,.{decimals}f}"
    if "." in text and abs(x) < 1:
        text = text.rstrip("0").rstrip(".")
    return ("-$" if x < 0 else "$") + text


class UsdFormatter(Formatter):  # type: ignore[misc]
    """Tick labels in dollars, as exact as the spacing of the ticks on the axis."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        locs = sorted(float(v) for v in getattr(self, "locs", []) if math.isfinite(v))
        steps = [b - a for a, b in itertools.pairwise(locs) if b > a]
        step = min(steps) if steps else abs(x)
        if getattr(self.axis, "get_scale", lambda: "linear")() == "log":
            step = abs(x) if x else 1.0  # each log tick stands alone: its own digits
        return usd_tick(x, step)


def log_usd_axis(axis: Any, low: float, high: float) -> None:
    """Dollar ticks on a log ``axis`` spanning ``low``..``high``: 1-2-5 steps when the span is
    short enough to label them apart, decades otherwise; minor ticks unlabelled."""
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(UsdFormatter())
    axis.set_minor_formatter(NullFormatter())


__all__ = ["UsdFormatter", "log_usd_axis", "usd_tick"]
