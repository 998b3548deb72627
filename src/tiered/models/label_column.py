"""``LabelColumn``: an expert that answers from a field of the input.

The field holds a label made before the run: an LLM's label computed offline, or a
human annotation. With a price per call it stands in for the expensive last stage,
which makes a whole online-learning run reproducible and free. Cascade file form::

    model: {kind: label_column, field: label, usd_per_call: 0.002}

A missing, ``None``, NaN or blank value answers ``None`` (no usable answer); the call is
still paid for, as an annotation queue bills an item it could not label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.models._params import parse_params

if TYPE_CHECKING:
    from tiered.checks import ModelCase


def _label(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


class LabelColumn:
    """Answers each item with ``item.fields[field]`` at ``usd_per_call`` per item."""

    tags = ModelTags()

    @classmethod
    def contract_case(cls) -> ModelCase:
        """How the contract checks (:mod:`tiered.checks`) build this model."""
        from tiered.checks import ModelCase

        return ModelCase.from_spec({"kind": "label_column", "usd_per_call": 0.002})

    def __init__(
        self,
        field: str = "label",
        *,
        usd_per_call: float = 0.0,
        latency_ms: float = 0.0,
        name: str = "label_column",
    ) -> None:
        self.field = field
        self.usd_per_call = usd_per_call
        self.latency_ms = latency_ms
        self.name = name

    def __repr__(self) -> str:
        return f"LabelColumn(field={self.field!r}, usd_per_call={self.usd_per_call})"

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        return AnswerBatch.from_labels(
            [_label(it.fields.get(self.field)) for it in items],
            cost=self.usd_per_call,
            latency_ms=self.latency_ms,
        )


class LabelColumnParams(BaseModel):
    """Parameters of ``kind: label_column`` (descriptions are the error messages)."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field("label", min_length=1, description="a non-empty field name")
    usd_per_call: float = Field(0.0, ge=0, description="a float >= 0 (USD)")
    latency_ms: float = Field(0.0, ge=0, description="a float >= 0 (milliseconds)")
    name: str = Field("label_column", min_length=1, description="a non-empty string")


@register_model("label_column")
def build_label_column(spec: dict[str, Any], ctx: BuildContext) -> LabelColumn:
    """Build a :class:`LabelColumn` from its spec (see :class:`LabelColumnParams`)."""
    p = parse_params("label_column", LabelColumnParams, spec)
    return LabelColumn(p.field, usd_per_call=p.usd_per_call, latency_ms=p.latency_ms, name=p.name)


__all__ = ["LabelColumn", "LabelColumnParams", "build_label_column"]
