"""The label buffer: the newest expert-labelled items, which cheap stages relearn from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered.core.items import Item


class LabelBuffer:
    """A bounded FIFO of ``(item, expert label)``; refits draw random samples from it.

    FIFO rather than a reservoir: after a shift the stream's recent past is what the
    stages must imitate, and the replayed sample still spans ``capacity`` labels.
    Items keep their ``cache`` (an embedding, say), so replay does not recompute it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[Item | None] = [None] * capacity
        self.labels: list[str | None] = [None] * capacity
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        for item, label in zip(items, labels, strict=True):
            self.items[self.pos] = item
            self.labels[self.pos] = label
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.capacity, self.size + 1)

    def sample(self, k: int, rng: np.random.Generator) -> tuple[list[Item], list[str]]:
        """Up to ``k`` distinct stored pairs, drawn uniformly."""
        k = min(k, self.size)
        if k <= 0:
            return [], []
        idx = rng.choice(self.size, size=k, replace=False).tolist()
        items = [self.items[i] for i in idx]
        labels = [self.labels[i] for i in idx]
        return items, labels  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        return {
            "items": list(self.items),
            "labels": list(self.labels),
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = list(state["items"])
        self.labels = list(state["labels"])
        self.capacity = len(self.items)
        self.pos = int(state["pos"])
        self.size = int(state["size"])


__all__ = ["LabelBuffer"]
