"""The ``Model`` protocol: anything that answers a batch of items.

Checks pick what to test from a model's declared :class:`ModelTags` (as scikit-learn's
estimator tags do), never from its class name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item


@dataclass(frozen=True, slots=True)
class ModelTags:
    """What a model can do; the contract checks are chosen from these."""

    gives_probabilities: bool = False  # answers carry probs over a fixed label set
    learns_online: bool = False  # implements ``learn(items, labels)``
    stochastic: bool = False  # same input may give different answers
    generates_text: bool = False  # free-text answers rather than labels
    asynchronous: bool = False  # implements ``apredict``; ``predict`` wraps it
    needs_server: bool = False  # talks to a server that must be running


@runtime_checkable
class Model(Protocol):
    """Answers items. ``predict`` must return exactly one answer per item, in order."""

    name: str
    tags: ModelTags

    def predict(self, items: Sequence[Item]) -> AnswerBatch: ...


@runtime_checkable
class AsyncModel(Model, Protocol):
    async def apredict(self, items: Sequence[Item]) -> AnswerBatch: ...


@runtime_checkable
class LearnableModel(Model, Protocol):
    """A model that learns from labels as they arrive (the cheap stages of a cascade)."""

    def learn(self, items: Sequence[Item], labels: Sequence[str]) -> None: ...


@runtime_checkable
class StatefulModel(Model, Protocol):
    """A model whose learned state can be saved and restored (plain data, no pickle)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


__all__ = ["AsyncModel", "LearnableModel", "Model", "ModelTags", "StatefulModel"]
