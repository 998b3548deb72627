"""The error–cost curve of a calibration and its normalised area (the published metric).

A calibration yields many operating points. Scored on rows it was not fitted on, each is
a (mean cost, mean error) pair; sorted by cost and joined by straight lines they make the
*held-out error–cost curve*. Its area over a cost range ``[lo, hi]`` divided by
``hi - lo`` is the curve's mean error over that range, the metric of Zellinger & Thomson
("Rational Tuning of LLM Cascades via Probabilistic Modeling", TMLR 2025): lower is
better. Methods are compared over the range they all cover (:func:`shared_range`: the
largest of their cheapest costs to the smallest of their dearest), so none is credited
for a stretch of cost only it reaches.

>>> curve = ErrorCostCurve.of(cost=[1.0, 2.0, 4.0], quality=[0.6, 0.8, 0.9])
>>> round(curve.mean_error(), 4)
0.2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiered.errors import ConfigError


def mean_error(cost: np.ndarray, error: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the piecewise-linear curve through ``(cost, error)`` over ``[lo, hi]``.

    Points are joined in cost order; beyond the cheapest or dearest point the curve is
    held flat. ``lo == hi`` gives the curve's value there.
    """
    x = np.asarray(cost, dtype=float)
    y = np.asarray(error, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ConfigError("an error–cost curve needs as many costs as errors (>= 1)", field="curve")
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ConfigError(f"bad cost range [{lo!r}, {hi!r}]", field="cost_range")
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    if hi == lo:
        return float(np.interp(lo, x, y))
    # flat ends: add the curve's first and last values at lo and hi when they lie outside
    if lo < x[0]:
        x, y = np.concatenate([[lo], x]), np.concatenate([[y[0]], y])
    if hi > x[-1]:
        x, y = np.concatenate([x, [hi]]), np.concatenate([y, [y[-1]]])
    x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
    a, b = np.clip(x0, lo, hi), np.clip(x1, lo, hi)
    width = x1 - x0
    slope = np.divide(y1 - y0, width, out=np.zeros_like(width), where=width > 0)
    ya, yb = y0 + slope * (a - x0), y0 + slope * (b - x0)
    return float(np.sum((b - a) * (ya + yb) / 2) / (hi - lo))


@dataclass(frozen=True)
class ErrorCostCurve:
    """Operating points as mean cost per item and mean error (1 - quality), cheapest first."""

    cost: np.ndarray
    error: np.ndarray
    labels: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        cost: Sequence[float] | np.ndarray,
        quality: Sequence[float] | np.ndarray,
        labels: Sequence[str] | None = None,
    ) -> ErrorCostCurve:
        c = np.asarray(cost, dtype=float)
        q = np.asarray(quality, dtype=float)
        if c.shape != q.shape or c.ndim != 1 or len(c) == 0:
            raise ConfigError(
                "an error–cost curve needs as many costs as qualities (>= 1)", field="curve"
            )
        order = np.lexsort((-q, c))
        names = [labels[i] for i in order.tolist()] if labels is not None else []
        return cls(c[order], 1.0 - q[order], names)

    @property
    def lo(self) -> float:
        return float(self.cost[0])

    @property
    def hi(self) -> float:
        return float(self.cost[-1])

    def mean_error(self, lo: float | None = None, hi: float | None = None) -> float:
        """The normalised area over ``[lo, hi]`` (default: the curve's own cost range)."""
        return mean_error(self.cost, self.error, self.lo if lo is None else lo,
                          self.hi if hi is None else hi)  # fmt: skip

    def rows(self) -> list[dict[str, Any]]:
        """One dict per point (cost per item, error, quality and, if known, a label)."""
        out = []
        for i, (c, e) in enumerate(zip(self.cost.tolist(), self.error.tolist(), strict=True)):
            row: dict[str, Any] = {"cost_per_item": c, "error": e, "quality": 1.0 - e}
            if self.labels:
                row["cascade"] = self.labels[i]
            out.append(row)
        return out


def shared_range(curves: Sequence[ErrorCostCurve]) -> tuple[float, float]:
    """The cost range every curve covers: (largest cheapest cost, smallest dearest cost).

    When the curves do not overlap, the range collapses to the point ``lo``.
    """
    if not curves:
        raise ConfigError("no curves to compare", field="curves")
    lo = max(c.lo for c in curves)
    hi = min(c.hi for c in curves)
    return lo, max(lo, hi)


__all__ = ["ErrorCostCurve", "mean_error", "shared_range"]
