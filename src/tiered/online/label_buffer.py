"""The label buffer: the newest expert-labelled items, which cheap stages relearn from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered.core.items import Item
from tiered.store.state import is_plain

_SCALARS = (bool, int, float, str)


def _packable(values: list[Any]) -> bool:
    first = values[0]
    if type(first) is not np.ndarray or first.ndim != 1 or first.dtype.kind not in "biufcUS":
        return False
    dtype = first.dtype
    return all(type(v) is np.ndarray and v.ndim == 1 and v.dtype == dtype for v in values)


def items_state(items: Sequence[Item]) -> dict[str, Any]:
    """``items`` as plain data for saved state, column by column.

    Cache entries that are 1-d arrays of one dtype (n-gram rows, embeddings) are packed
    into one array per cache key: thousands of small arrays would cost more to save than
    their bytes. Other entries are kept if saved state can hold them, else dropped (a
    cache is computed again when needed).
    """
    columns: dict[str, tuple[list[int], list[Any]]] = {}
    for i, it in enumerate(items):
        for key, value in it.cache.items():
            rows, values = columns.setdefault(key, ([], []))
            rows.append(i)
            values.append(value)
    cache = []
    for key, (rows, values) in columns.items():
        if _packable(values):
            lengths = np.fromiter((len(v) for v in values), np.int64, len(values))
            cache.append(
                {"key": key, "rows": rows, "lengths": lengths, "packed": np.concatenate(values)}
            )
        elif all(type(v) in _SCALARS for v in values):  # marks, say: all kept
            cache.append({"key": key, "rows": rows, "values": values})
        else:
            kept = [(r, v) for r, v in zip(rows, values, strict=True) if is_plain(v)]
            cache.append({"key": key, "rows": [r for r, _ in kept], "values": [v for _, v in kept]})
    return {
        "ids": [it.id for it in items],
        "inputs": [it.input for it in items],
        "fields": [it.fields for it in items],
        "params": [it.params for it in items],
        "cache": cache,
    }


def items_from_state(state: dict[str, Any]) -> list[Item]:
    """The items :func:`items_state` saved."""
    items = [
        Item(id=str(i), input=x, fields=dict(f), params=dict(p))
        for i, x, f, p in zip(
            state["ids"], state["inputs"], state["fields"], state["params"], strict=True
        )
    ]
    for column in state["cache"]:
        key, rows = str(column["key"]), column["rows"]
        if "packed" in column:
            ends = np.cumsum(column["lengths"])
            if len(ends) != len(rows) or (len(ends) and ends[-1] != len(column["packed"])):
                raise ValueError(f"cache column '{key}' does not add up")
            packed, starts = column["packed"], [0, *ends[:-1].tolist()]
            # copies: a cached row must not pin the whole column
            values = [packed[a:b].copy() for a, b in zip(starts, ends.tolist(), strict=True)]
        else:
            values = column["values"]
        for r, v in zip(rows, values, strict=True):
            items[r].cache[key] = v
    return items


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
        """Plain data (items as :func:`items_state`), for saved state."""
        return {
            "capacity": self.capacity,
            "items": items_state(self.items[: self.size]),  # type: ignore[arg-type]
            "labels": list(self.labels[: self.size]),
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.size = int(state["size"])
        self.pos = int(state["pos"])
        items = items_from_state(state["items"])
        n = self.size
        if not (0 <= n <= self.capacity and len(items) == len(state["labels"]) == n):
            raise ValueError(f"label buffer state holds {len(items)} items, size {n}")
        free = self.capacity - self.size
        self.items = [*items, *[None] * free]
        self.labels = list(state["labels"]) + [None] * free


__all__ = ["LabelBuffer", "items_from_state", "items_state"]
