"""Wall time of a model's calls, to compare a run with the expert-only alternative."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item


class Timed:
    """A transparent proxy that adds up the seconds and items of ``predict`` calls."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.seconds = 0.0
        self.items = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        t0 = time.perf_counter()
        try:
            return self._model.predict(items)  # type: ignore[no-any-return]
        finally:
            self.seconds += time.perf_counter() - t0
            self.items += len(items)

    @property
    def seconds_per_item(self) -> float:
        return self.seconds / self.items if self.items else 0.0
