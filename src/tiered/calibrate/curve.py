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

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.errors import ConfigError

if TYPE_CHECKING:
    from tiered.calibrate.calibrator import FrontierPoint
    from tiered.core.spec import CascadeSpec
    from tiered.replay.view import LogView


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


def frontier_record(point: FrontierPoint) -> dict[str, Any]:
    """A frontier point as a cascade file's metadata keeps it: numbers, text, and (when every
    rule is a built-in one) the stages and rules, so the frontier can be replayed on
    another log (:func:`frontier_curve`)."""
    rec: dict[str, Any] = {
        "cost_per_item": point.cost,
        "quality": point.quality,
        "cascade": point.text(),
    }
    if all(type(r).__module__.startswith("tiered.core") for r in point.rules):
        # one JSON line per point: the frontier stays a readable list in the YAML file
        rules = [r.model_dump(mode="json") for r in point.rules]
        rec["replay"] = json.dumps({"stages": list(point.stages), "rules": rules})
    return rec


@dataclass
class CurveReport:
    """A cascade file's frontier replayed on a log: points, curve and normalised area."""

    rows: list[dict[str, Any]]  # kind (frontier, single, cascade), cost, quality, error, text
    curve: ErrorCostCurve | None  # the frontier's (None: the file keeps no frontier)
    area: float  # mean error over the curve's cost range (NaN without a curve)
    cost_range: tuple[float, float]
    top_cost: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "normalised_area": self.area,
            "cost_range": list(self.cost_range),
            "top_cost_per_item": self.top_cost,
            "points": self.rows,
        }

    def save(self, path: str | Path) -> Path:
        """Write the points as CSV (``.csv``) or everything as JSON (any other suffix)."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            cols = ["kind", "cost_per_item", "relative_cost", "quality", "error", "cascade"]
            with path.open("w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.rows)
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def frontier_curve(spec: CascadeSpec, view: LogView) -> CurveReport:
    """Replay the frontier recorded in ``spec``'s metadata (by ``tiered calibrate``), the
    cascade itself and every single model on ``view``: the held-out error–cost curve when
    ``view`` is a log the cascade was not fitted on."""
    from tiered.calibrate.evaluate import StageRef, evaluate_spec, evaluate_stages
    from tiered.core.rules import Always, parse_rule

    top_c = view.top()[2]
    rows: list[dict[str, Any]] = []

    def add(kind: str, cost: np.ndarray, quality: np.ndarray, text: str) -> None:
        c, q = float(np.mean(cost)), float(np.nanmean(quality))
        rows.append({"kind": kind, "cost_per_item": c,
                     "relative_cost": c / top_c if top_c > 0 else math.nan,
                     "quality": q, "error": 1.0 - q, "cascade": text})  # fmt: skip

    front = []
    for i, rec in enumerate(spec.metadata.get("frontier") or []):
        if "replay" not in rec:
            continue
        try:
            got = json.loads(rec["replay"])
            names = list(got["stages"])
            rules = [parse_rule(r) for r in got["rules"]]
            refs = [
                StageRef(n, view.log.model_index(n), r) for n, r in zip(names, rules, strict=False)
            ]
            refs.append(StageRef(names[-1], view.log.model_index(names[-1]), Always()))
        except (ConfigError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(
                f"frontier point {i} of the cascade file cannot be replayed: {exc}",
                field=f"metadata.frontier.{i}",
            ) from None
        out = evaluate_stages(view, refs)
        add("frontier", out.cost, out.quality, str(rec.get("cascade", "")))
        front.append(rows[-1])
    for j, name in enumerate(view.models):
        add("single", view.cost[:, j], view.quality[:, j], name)
    out = evaluate_spec(spec, view)
    add("cascade", out.cost, out.quality, spec.name)
    if not front:
        return CurveReport(rows, None, math.nan, (math.nan, math.nan), top_c)
    curve = ErrorCostCurve.of([r["cost_per_item"] for r in front], [r["quality"] for r in front])
    return CurveReport(rows, curve, curve.mean_error(), (curve.lo, curve.hi), top_c)


__all__ = [
    "CurveReport",
    "ErrorCostCurve",
    "frontier_curve",
    "frontier_record",
    "mean_error",
    "shared_range",
]
