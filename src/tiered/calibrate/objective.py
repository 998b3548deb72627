"""What the calibrator optimises: least cost at a quality target, or best quality in a budget.

A quality target is an absolute number (``0.85``) or relative to the best single model's
quality on the log being fitted: ``top``, ``top-0.01`` (one point below), ``top*0.95``
(95% of it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tiered.errors import ConfigError

_RELATIVE = re.compile(r"^top\s*(?:(?P<op>[-*])\s*(?P<num>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?))?$")


@dataclass(frozen=True, slots=True)
class QualityTarget:
    """``value`` alone (absolute), or ``top - value`` / ``top * value``."""

    kind: str  # "absolute" | "top-" | "top*"
    value: float
    text: str

    def resolve(self, top_quality: float) -> float:
        """The absolute quality this target asks for, given the best single model's."""
        if self.kind == "absolute":
            return self.value
        if self.kind == "top-":
            return top_quality - self.value
        return top_quality * self.value

    @property
    def relative(self) -> bool:
        return self.kind != "absolute"


def _bad(text: object, why: str) -> ConfigError:
    return ConfigError(
        f"The 'min_quality' parameter must be {why}. Got {text!r} instead.", field="min_quality"
    )


def parse_min_quality(text: str | float | QualityTarget) -> QualityTarget:
    """Parse ``top``, ``top-0.01``, ``top*0.95`` or a number in [0, 1]."""
    if isinstance(text, QualityTarget):
        return text
    want = "a number in [0, 1], 'top', 'top-X' (X in [0, 1)) or 'top*X' (X in (0, 1])"
    if isinstance(text, bool):
        raise _bad(text, want)
    if isinstance(text, int | float):
        value = float(text)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise _bad(text, want)
        return QualityTarget("absolute", value, f"{value:g}")
    if not isinstance(text, str):
        raise _bad(text, want)
    s = text.strip().lower()
    match = _RELATIVE.match(s)
    if match:
        op, num = match.group("op"), match.group("num")
        if op is None:
            return QualityTarget("top-", 0.0, "top")
        value = float(num)
        if op == "-" and not 0.0 <= value < 1.0:
            raise _bad(text, want)
        if op == "*" and not 0.0 < value <= 1.0:
            raise _bad(text, want)
        return QualityTarget("top-" if op == "-" else "top*", value, f"top{op}{num}")
    try:
        value = float(s)
    except ValueError:
        raise _bad(text, want) from None
    return parse_min_quality(value)


def parse_budget(budget: float | None) -> float | None:
    """A budget is USD per item, a finite number > 0 (or None for no budget)."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ConfigError(
            f"The 'budget' parameter must be a number of USD per item > 0. Got {budget!r} instead.",
            field="budget",
        )
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(
            f"The 'budget' parameter must be a number of USD per item > 0. Got {budget!r} instead.",
            field="budget",
        )
    return float(budget)


@dataclass(frozen=True, slots=True)
class Objective:
    """Least cost with quality >= ``min_quality``; with a ``budget``, best quality within it.

    Both may be given: best quality within the budget, which must still reach the target.
    """

    min_quality: QualityTarget | None = None
    budget: float | None = None

    @classmethod
    def make(
        cls, min_quality: str | float | QualityTarget | None = None, budget: float | None = None
    ) -> Objective:
        b = parse_budget(budget)
        if min_quality is None and b is None:
            min_quality = "top"
        q = None if min_quality is None else parse_min_quality(min_quality)
        return cls(q, b)

    def met(
        self, quality: float, cost: float, reference: float | None, tolerance: float = 0.0
    ) -> bool:
        """Whether a quality and a cost per item meet the objective: quality at least the
        resolved target ``reference`` less ``tolerance``, cost within the budget."""
        return (reference is None or quality >= reference - tolerance - 1e-9) and (
            self.budget is None or cost <= self.budget * (1 + 1e-9)
        )

    def describe(self, target: float | None = None) -> str:
        parts = []
        if self.budget is not None:
            parts.append(f"best quality at cost <= ${self.budget:.4g}/item")
        if self.min_quality is not None:
            resolved = "" if target is None else f" ({target:.4f})"
            lead = "least cost at " if self.budget is None else ""
            parts.append(f"{lead}quality >= {self.min_quality.text}{resolved}")
        return ", ".join(parts)


__all__ = ["Objective", "QualityTarget", "parse_budget", "parse_min_quality"]
