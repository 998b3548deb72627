"""The rows of a replay log the calibrator works on, as model-by-query matrices.

A :class:`LogView` is built once per log (:meth:`LogView.of`) and sliced cheaply per
cross-validation fold (:meth:`LogView.take`). Answers come from the same
:class:`~tiered.replay.model.Replay` model the engine replays, so a rule computed on a
view sees exactly what it would see inside ``Cascade.run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.rules import ANSWER_EXTRACTORS, normalize_answer
from tiered.replay.log import ReplayLog
from tiered.replay.model import Replay, replay_items


def _answer_codes(labels: np.ndarray, extract: str | None) -> np.ndarray:
    """Integer id per answer as ``Agreement(extract=...)`` compares it; -1 = agrees with nothing."""
    ids: dict[str, int] = {}
    flat = [normalize_answer(x, extract) for x in labels.ravel().tolist()]
    out = np.fromiter(
        (-1 if x is None else ids.setdefault(x, len(ids)) for x in flat),
        dtype=np.int64,
        count=len(flat),
    )
    return out.reshape(labels.shape)


@dataclass
class LogView:
    """Matrices of ``rows`` of ``log``: row ``i`` is a query, column ``j`` a model.

    - ``quality``/``cost``: what a stage of model ``j`` scores and costs on query ``i``.
    - ``answered``: the model's answer can be accepted (it has a recorded output).
    - ``codes``: per answer extractor (None = whole answer), normalised answer ids; equal
      codes (>= 0) are answers ``Agreement`` with that ``extract`` equates.
    """

    log: ReplayLog
    rows: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    answered: np.ndarray
    codes: dict[str | None, np.ndarray]
    signals: dict[str, np.ndarray]
    _replays: list[Replay] = field(repr=False)
    _items: list[Item] = field(repr=False)
    _answers: dict[int, AnswerBatch] = field(default_factory=dict, repr=False)
    _best_extract: list[str | None] = field(default_factory=list, repr=False)
    _view_items: list[Item] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, log: ReplayLog) -> LogView:
        replays = [Replay(log, m) for m in log.models]
        items = replay_items(log)
        answers = {j: r.predict(items) for j, r in enumerate(replays)}
        labels = np.empty((len(log), len(replays)), dtype=object)
        for j, a in answers.items():
            labels[:, j] = a.labels
        return cls(
            log=log,
            rows=np.arange(len(log)),
            quality=np.asarray(log.quality, dtype=float),
            cost=np.asarray(log.cost, dtype=float),
            answered=labels != None,  # noqa: E711 - elementwise on an object array
            codes={x: _answer_codes(labels, x) for x in (None, *ANSWER_EXTRACTORS)},
            signals={k: np.asarray(v, dtype=float) for k, v in log.signals.items()},
            _replays=replays,
            _items=items,
            _answers=answers,
        )

    def take(self, rows: np.ndarray) -> LogView:
        """The view restricted to ``rows`` (positions in this view)."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, dtype=np.intp)
        return LogView(
            log=self.log,
            rows=self.rows[rows],
            quality=self.quality[rows],
            cost=self.cost[rows],
            answered=self.answered[rows],
            codes={k: v[rows] for k, v in self.codes.items()},
            signals={k: v[rows] for k, v in self.signals.items()},
            _replays=self._replays,
            _items=self._items,
        )

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def m(self) -> int:
        return len(self.log.models)

    @property
    def models(self) -> list[str]:
        return self.log.models

    def items(self) -> list[Item]:
        """The queries of this view as the engine's items."""
        if len(self.rows) == len(self._items):
            return self._items
        if not self._view_items:
            self._view_items.extend(self._items[i] for i in self.rows.tolist())
        return self._view_items

    def answers(self, j: int) -> AnswerBatch:
        """Model ``j``'s answers on this view's rows, exactly as its Replay model gives them."""
        got = self._answers.get(j)
        if got is None:
            got = self._answers[j] = self._replays[j].predict(self.items())
        return got

    def labels(self, j: int) -> list[str | None]:
        return self.answers(j).labels

    def signals_of(self, j: int) -> list[str]:
        """Signals model ``j`` carries on at least one of these rows (with a usable answer)."""
        ok = self.answered[:, j]
        return sorted(k for k, v in self.signals.items() if np.isfinite(v[ok, j]).any())

    def agree_count(
        self, j: int, earlier: tuple[int, ...], extract: str | None = None
    ) -> np.ndarray:
        """How many of the ``earlier`` models gave the same (normalised) answer as ``j``."""
        codes = self.codes[extract]
        mine = codes[:, j]
        count = np.zeros(self.n, dtype=np.int64)
        for e in earlier:
            count += (codes[:, e] == mine) & (mine >= 0)
        return count

    def agreement_rate(self, extract: str | None) -> float:
        """Share of (query, model pair) with equal answers under ``extract``."""
        codes = self.codes[extract]
        m = self.m
        if m < 2 or self.n == 0:
            return 0.0
        total = 0.0
        for a in range(m):
            for b in range(a + 1, m):
                total += float(((codes[:, a] == codes[:, b]) & (codes[:, a] >= 0)).mean())
        return total / (m * (m - 1) / 2)

    def best_extract(self) -> str | None:
        """The answer extractor under which models agree most (None: compare whole answers).

        An extractor must raise the agreement rate clearly (by 5 points) to be preferred:
        comparing whole answers is the simpler rule.
        """
        if not self._best_extract:
            best, rate = None, self.agreement_rate(None) + 0.05
            for x in ANSWER_EXTRACTORS:
                r = self.agreement_rate(x)
                if r > rate:
                    best, rate = x, r
            self._best_extract.append(best)
        return self._best_extract[0]

    def top(self) -> tuple[int, float, float]:
        """Column, quality and mean cost of the best single model (ties: the cheaper)."""
        q = self.quality.mean(axis=0)
        c = self.cost.mean(axis=0)
        best = q.max()
        tied = np.flatnonzero(q >= best - 1e-12)
        j = int(tied[np.argmin(c[tied])])
        return j, float(q[j]), float(c[j])


__all__ = ["LogView"]
