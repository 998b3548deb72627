"""Cost models: what one call of a stage costs, in USD (or in ms for ``latency``).

``recorded`` (the default) keeps the cost the model reports itself: a replay log's
``cost`` field, or an LLM client's priced usage. The others price a call from what the
answers carry, whatever the model reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tiered.core.answers import AnswerBatch
from tiered.errors import ConfigError


class CostModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str

    def cost(self, answers: AnswerBatch) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RecordedCost(CostModel):
    """The cost the model reported for each call."""

    kind: Literal["recorded"] = "recorded"

    def cost(self, answers: AnswerBatch) -> np.ndarray:
        return answers.cost


class FixedCost(CostModel):
    """A fixed price per call (a label column, a human annotator, a flat-rate API)."""

    kind: Literal["fixed"] = "fixed"
    usd_per_call: float = Field(ge=0)

    def cost(self, answers: AnswerBatch) -> np.ndarray:
        return np.full(len(answers), self.usd_per_call)


class TokenCost(CostModel):
    """USD per input token and per output token, plus a per-request fee."""

    kind: Literal["tokens"] = "tokens"
    usd_per_input_token: float = Field(default=0.0, ge=0)
    usd_per_output_token: float = Field(default=0.0, ge=0)
    usd_per_request: float = Field(default=0.0, ge=0)

    def cost(self, answers: AnswerBatch) -> np.ndarray:
        n = len(answers)
        t_in = answers.tokens_in if answers.tokens_in is not None else np.zeros(n)
        t_out = answers.tokens_out if answers.tokens_out is not None else np.zeros(n)
        return (
            np.nan_to_num(t_in) * self.usd_per_input_token
            + np.nan_to_num(t_out) * self.usd_per_output_token
            + self.usd_per_request
        )


class LatencyCost(CostModel):
    """Measured latency as the cost: ``per_ms`` units per millisecond (1.0 = cost in ms)."""

    kind: Literal["latency"] = "latency"
    per_ms: float = Field(default=1.0, ge=0)

    def cost(self, answers: AnswerBatch) -> np.ndarray:
        usd: np.ndarray = np.nan_to_num(answers.latency_ms) * self.per_ms
        return usd


_COSTS: dict[str, type[CostModel]] = {
    "recorded": RecordedCost,
    "fixed": FixedCost,
    "tokens": TokenCost,
    "latency": LatencyCost,
}


def parse_cost(spec: CostModel | Mapping[str, Any] | float | None) -> CostModel:
    """Build a cost model from YAML: a mapping with ``kind``, a bare number (fixed), or None."""
    if spec is None:
        return RecordedCost()
    if isinstance(spec, CostModel):
        return spec
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return FixedCost(usd_per_call=float(spec))
    if not isinstance(spec, Mapping):
        raise ConfigError(
            "must be a mapping with a 'kind', a number (USD per call) or null. "
            f"Got a {type(spec).__name__} instead",
            field="cost",
        )
    kind = spec.get("kind")
    cls = _COSTS.get(str(kind))
    if cls is None:
        raise ConfigError(
            f"unknown cost kind {kind!r}; known kinds: {', '.join(sorted(_COSTS))}",
            field="cost.kind",
        )
    return cls.model_validate(dict(spec))


__all__ = ["CostModel", "FixedCost", "LatencyCost", "RecordedCost", "TokenCost", "parse_cost"]
