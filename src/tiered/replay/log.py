"""In-memory replay log: every model's recorded output for every query, as matrices.

Row ``i`` is a query, column ``j`` a model; models are ordered by mean cost, cheapest
first. A query that lacks a model's output has ``present[i, j] = False``, quality 0
(counted as wrong) and that model's mean cost, as evaluation requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class ReplayLog:
    ids: list[str]
    models: list[str]
    present: np.ndarray  # bool (n, m)
    quality: np.ndarray  # float (n, m), in [0, 1]
    cost: np.ndarray  # float (n, m), USD per call
    latency_ms: np.ndarray  # float (n, m), NaN where unknown
    answers: np.ndarray  # object (n, m): answer text, None where missing
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float (n, m), NaN absent
    tokens_in: np.ndarray | None = None  # float (n, m)
    tokens_out: np.ndarray | None = None
    samples: np.ndarray | None = None  # object (n, m): list[str] or None
    tasks: list[str | None] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    path: str | None = None
    # What the loader did besides reading: lines skipped to the reject file, records of
    # one query split over several lines and merged, and anything else worth telling.
    skipped: int = 0
    reject_path: str | None = None
    merged_duplicates: int = 0
    notes: list[str] = field(default_factory=list)
    _row_of: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_for(self, ids: Sequence[str]) -> np.ndarray:
        """Row index of each id (a dict lookup per id); an unknown id is a DataError."""
        if self._row_of is None:
            self._row_of = {x: i for i, x in enumerate(self.ids)}
        row_of = self._row_of
        try:
            # list(map(...)) then one conversion beats np.fromiter over a generator here
            return np.array(list(map(row_of.__getitem__, ids)), dtype=np.intp)
        except KeyError as exc:
            from tiered.errors import DataError

            raise DataError(
                f"id {exc.args[0]!r} is not in the replay log ({len(self)} queries)",
                path=self.path,
            ) from None

    def signals_of(self, model: str) -> list[str]:
        """Names of the signals ``model`` carries for at least one query."""
        j = self.model_index(model)
        return sorted(k for k, v in self.signals.items() if not np.isnan(v[:, j]).all())

    @property
    def n_models(self) -> int:
        return len(self.models)

    def model_index(self, name: str) -> int:
        try:
            return self.models.index(name)
        except ValueError:
            from tiered.errors import ConfigError

            raise ConfigError(
                f"model '{name}' is not in the replay log {self.path or ''}; "
                f"its models: {', '.join(self.models)}",
                field="model",
            ) from None

    def mean_quality(self) -> np.ndarray:
        """Per-model quality (missing outputs count as wrong)."""
        return self.quality.mean(axis=0) if len(self) else np.zeros(self.n_models)

    def mean_cost(self) -> np.ndarray:
        return self.cost.mean(axis=0) if len(self) else np.zeros(self.n_models)

    def missing_counts(self) -> dict[str, int]:
        """How many queries lack each model's output."""
        miss = (~self.present).sum(axis=0)
        return {m: int(c) for m, c in zip(self.models, miss, strict=True)}

    def rows_with_missing(self) -> int:
        return int((~self.present).any(axis=1).sum())

    def subset(self, rows: np.ndarray) -> ReplayLog:
        """The log restricted to ``rows`` (index array or boolean mask)."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        pick = rows.tolist()

        def lst(x: list[Any]) -> list[Any]:
            return [x[i] for i in pick] if x else []

        return replace(
            self,
            ids=[self.ids[i] for i in pick],
            present=self.present[rows],
            quality=self.quality[rows],
            cost=self.cost[rows],
            latency_ms=self.latency_ms[rows],
            answers=self.answers[rows],
            signals={k: v[rows] for k, v in self.signals.items()},
            tokens_in=None if self.tokens_in is None else self.tokens_in[rows],
            tokens_out=None if self.tokens_out is None else self.tokens_out[rows],
            samples=None if self.samples is None else self.samples[rows],
            tasks=lst(self.tasks),
            inputs=lst(self.inputs),
            references=lst(self.references),
        )

    def select_models(self, names: list[str]) -> ReplayLog:
        """The log with only ``names`` as models, in that order."""
        cols = np.array([self.model_index(n) for n in names], dtype=int)

        def c(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[:, cols]

        return replace(
            self,
            models=list(names),
            present=self.present[:, cols],
            quality=self.quality[:, cols],
            cost=self.cost[:, cols],
            latency_ms=self.latency_ms[:, cols],
            answers=self.answers[:, cols],
            signals={k: v[:, cols] for k, v in self.signals.items()},
            tokens_in=c(self.tokens_in),
            tokens_out=c(self.tokens_out),
            samples=c(self.samples),
        )


__all__ = ["ReplayLog"]
