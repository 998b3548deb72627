"""Shared fixtures: small fake models for engine tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from tiered.core import AnswerBatch, Item, ModelTags


class FakeModel:
    """Answers from functions of the item; counts calls so tests can see what ran."""

    tags = ModelTags()

    def __init__(
        self,
        name: str,
        label: Callable[[Item], str | None],
        cost: float = 1.0,
        signals: dict[str, Callable[[Item], float]] | None = None,
        latency_ms: float = 1.0,
    ) -> None:
        self.name = name
        self._label = label
        self._cost = cost
        self._signals = signals or {}
        self._latency = latency_ms
        self.seen: list[str] = []

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.seen.extend(it.id for it in items)
        return AnswerBatch.from_labels(
            [self._label(it) for it in items],
            cost=self._cost,
            latency_ms=self._latency,
            signals={
                k: np.array([f(it) for it in items], dtype=float) for k, f in self._signals.items()
            },
        )


@pytest.fixture
def fake_model() -> type[FakeModel]:
    return FakeModel
