"""The checkpoint protocol: where a run stands, committed in ONE store transaction.

:class:`Checkpointer` holds the run's store, its source and its opened sinks. It opens
them at the positions of the last checkpoint (or anew), and :meth:`Checkpointer.commit`
does the three steps of :mod:`tiered.runner.protocols`: sync every sink, commit every
position with the counters, the learned state and the new history rows in one
transaction, then acknowledge the source.

Starting is ordered so that a refused or killed start never loses data: a *new* run
opens (and locks) its sinks before recording itself in the store, so a sink that still
holds another run's data is refused and the store stays empty; a *fresh* run (``--fresh``)
records itself first, so a kill before the sinks are cut back leaves a run without a
checkpoint, which resumes from the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiered.runner.counters import RunCounters
from tiered.runner.protocols import (
    Opening,
    Position,
    SharedLearning,
    Sink,
    SinkOpener,
    Source,
)
from tiered.store.runs import Checkpoint, RunIdentity, RunStore

SOURCE = "source"


@dataclass
class Endpoints:
    """A run's source and sink openers, by role (``output``, ``rejects``, ``replay``).

    ``input_id``/``output_id`` name the input and the output in the run's identity (a
    resolved path, a stream URL): resuming with other ones is refused. ``shared``: the
    learning this run shares with other workers on the same stream (None: it learns alone).
    """

    source: Source
    sinks: dict[str, SinkOpener]
    input_id: str
    output_id: str
    shared: SharedLearning | None = None


@dataclass
class Resumed:
    """How a session started: the checkpoint it resumed from (None: a new run)."""

    checkpoint: Checkpoint | None
    opening: Opening
    counters: RunCounters = field(default_factory=RunCounters)

    @property
    def position(self) -> Position | None:
        cp = self.checkpoint
        return None if cp is None else cp.positions.get(SOURCE)


class Checkpointer:
    """Opens a run's store and sinks at their saved positions; commits checkpoints."""

    def __init__(self, store_path: Path, endpoints: Endpoints) -> None:
        self.store_path = store_path
        self.endpoints = endpoints
        self.store: RunStore | None = None
        self.sinks: dict[str, Sink] = {}
        self._seq = 0

    def open(self, config_hash: str, *, fresh: bool, config: dict[str, Any]) -> Resumed:
        """Lock the store, resume the saved run (or begin one), open every sink."""
        ep = self.endpoints
        identity = RunIdentity(config_hash=config_hash, input=ep.input_id, output=ep.output_id)
        self.store = store = RunStore(self.store_path)
        try:
            store.lock()
            saved = store.saved_run(identity, fresh=fresh)
            opening: Opening = "resume" if saved is not None else "fresh" if fresh else "new"
            if opening == "fresh":
                store.begin(identity, config=config)
            positions = saved.positions if saved is not None else {}
            for role, opener in ep.sinks.items():
                self.sinks[role] = opener(opening, positions.get(role))
            if opening == "new":
                store.begin(identity, config=config)
        except BaseException:
            self.close()
            raise
        resumed = Resumed(saved, opening)
        if saved is not None:
            self._seq = saved.seq
            resumed.counters = RunCounters.from_json(saved.counters)
        return resumed

    def sink(self, role: str) -> Sink | None:
        return self.sinks.get(role)

    def commit(
        self,
        position: Position | None,
        counters: RunCounters,
        learner: Any,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> Checkpoint:
        """Sync every sink, commit all positions + counters + learner + history at once,
        then acknowledge the source up to ``position``."""
        assert self.store is not None, "open() first"
        positions: dict[str, Any] = {SOURCE: position}
        for role, sink in self.sinks.items():
            positions[role] = sink.sync()
        cp = Checkpoint(
            positions=positions, counters=counters.to_json(), learner=learner, seq=self._seq
        )
        cp = self.store.commit(cp, [dict(r) for r in history])
        self._seq = cp.seq
        if position is not None:
            self.endpoints.source.acknowledge(position)
        return cp

    def history(self) -> list[dict[str, Any]]:
        assert self.store is not None, "open() first"
        return self.store.history()

    def close(self) -> None:
        """Close every sink, the source and the store (releasing their locks)."""
        for sink in self.sinks.values():
            sink.close()
        self.sinks = {}
        self.endpoints.source.close()
        if self.store is not None:
            self.store.close()
            self.store = None


__all__ = ["SOURCE", "Checkpointer", "Endpoints", "Resumed"]
