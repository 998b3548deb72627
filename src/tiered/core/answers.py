"""Columnar answers of one model for a batch of items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


@dataclass(slots=True)
class AnswerBatch:
    """Answers for ``n`` items, one column per field (batch-first, numpy where numeric).

    - ``labels``: the answer (a class label or free text); ``None`` means the model gave
      no usable answer (outside the label set, missing from a log): such an item is
      always passed on.
    - ``cost`` (USD) and ``latency_ms`` per item.
    - ``signals``: named confidence signals (``logprob``, ``score``, ...), NaN where absent.
      Derived signals (``max_prob``, ``margin``, ``entropy``, ``vote``) are computed from
      ``probs`` and ``samples`` by :mod:`tiered.core.signals`.
    - ``probs``/``classes``: class probabilities, shape ``(n, len(classes))``.
    - ``samples``: k sampled answers per item (Mixture-of-Thought voting).
    - ``quality``: known correctness in [0, 1] (replay logs), NaN where unknown.
    """

    labels: list[str | None]
    cost: np.ndarray
    latency_ms: np.ndarray
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    probs: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    samples: list[list[str]] | None = None
    quality: np.ndarray | None = None
    tokens_in: np.ndarray | None = None
    tokens_out: np.ndarray | None = None
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.cost = np.asarray(self.cost, dtype=float)
        self.latency_ms = np.asarray(self.latency_ms, dtype=float)
        for name, col in (("cost", self.cost), ("latency_ms", self.latency_ms)):
            if col.shape != (n,):
                raise ValueError(f"AnswerBatch.{name} has shape {col.shape}, expected ({n},)")
        if self.probs is not None and (
            self.classes is None or self.probs.shape != (n, len(self.classes))
        ):
            raise ValueError("AnswerBatch.probs must have shape (n, len(classes)) and classes set")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls) -> AnswerBatch:
        return cls(labels=[], cost=np.zeros(0), latency_ms=np.zeros(0))

    @classmethod
    def from_labels(
        cls,
        labels: Sequence[str | None],
        *,
        cost: float | np.ndarray = 0.0,
        latency_ms: float | np.ndarray = 0.0,
        **kwargs: Any,
    ) -> AnswerBatch:
        n = len(labels)
        return cls(
            labels=list(labels),
            cost=np.broadcast_to(np.asarray(cost, dtype=float), (n,)).copy(),
            latency_ms=np.broadcast_to(np.asarray(latency_ms, dtype=float), (n,)).copy(),
            **kwargs,
        )

    @property
    def answered(self) -> np.ndarray:
        """Mask of items with a usable answer."""
        return np.fromiter((x is not None for x in self.labels), dtype=bool, count=len(self.labels))

    def take(self, idx: np.ndarray) -> AnswerBatch:
        """The answers at positions ``idx`` (an index array or boolean mask)."""
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        pick = idx.tolist()

        def col(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return replace(
            self,
            labels=[self.labels[i] for i in pick],
            cost=self.cost[idx],
            latency_ms=self.latency_ms[idx],
            signals={k: v[idx] for k, v in self.signals.items()},
            probs=col(self.probs),
            samples=None if self.samples is None else [self.samples[i] for i in pick],
            quality=col(self.quality),
            tokens_in=col(self.tokens_in),
            tokens_out=col(self.tokens_out),
            extra={k: [v[i] for i in pick] for k, v in self.extra.items()},
        )


__all__ = ["AnswerBatch"]
