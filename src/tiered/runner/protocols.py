"""What a resumable run reads from and writes to: :class:`Source` and :class:`Sink`.

Both speak of positions as **opaque tokens**: any JSON value (a record offset or a byte
length for a file, a stream entry id for Redis Streams, a partition id for a batch
engine) that only the endpoint itself interprets. The run stores every token it was
handed in ONE checkpoint transaction (see :mod:`tiered.runner.checkpoint`), together
with its counters and the learner's state, and hands each back when the run resumes.

A checkpoint goes in three steps:

1. every sink's :meth:`Sink.sync` makes what it was given durable and returns its
   position (a file: fsync, then its length);
2. the store commits the source's position, every sink's position, the counters and the
   learned state in one transaction;
3. :meth:`Source.acknowledge` tells the source that everything up to that position is
   answered for good (a file: nothing to do; a stream: ``XACK``).

A sink that cannot be cut back (a stream) gets exactly-once from its own atomic step:
:meth:`Sink.write` hands it the source position every batch answers through, so its
``sync`` can append the rows, mark their ids done and acknowledge the input in one
``MULTI``/Lua step; when it is reopened after a kill it skips ids it already holds
instead of truncating. A file sink instead is truncated back to its checkpointed length.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

from tiered.core.items import Item

if TYPE_CHECKING:
    from tiered.online import OnlineCascade, OnlineDecision

Position: TypeAlias = Any
"""A JSON-serialisable position token, meaningful only to the endpoint that made it."""

Opening = Literal["new", "fresh", "resume"]
"""How a sink is opened: ``new`` (no saved run knows it: leftover data is an error),
``fresh`` (``--fresh``: discard what it holds) or ``resume`` (from a checkpointed position)."""


@runtime_checkable
class Rejected(Protocol):
    """A record that could not become an item; its JSON form goes to the reject sink."""

    def to_json(self) -> dict[str, Any]: ...


@runtime_checkable
class Batch(Protocol):
    """Consecutive records of a source: good ones as items, the rest rejected.

    ``end`` is the position just after the batch's last record: where to resume once the
    batch is fully handled. ``gold`` holds one optional gold label per item.
    """

    @property
    def items(self) -> Sequence[Item]: ...

    @property
    def gold(self) -> Sequence[str | None]: ...

    @property
    def rejects(self) -> Sequence[Rejected]: ...

    @property
    def end(self) -> Position: ...

    @property
    def n_records(self) -> int: ...


@runtime_checkable
class Source(Protocol):
    """A stream of records that a run can resume at a position it was handed."""

    name: str

    def batches(
        self, start: Position | None = None, batch_size: int = 256, max_records: int | None = None
    ) -> Iterator[Batch]:
        """Batches from just after ``start`` (None: the beginning), at most ``max_records``
        records in all (None: to the end of the stream)."""
        ...

    def records_hint(self) -> int | None:
        """How many records the whole stream holds, if cheaply known (a progress bar)."""
        ...

    def acknowledge(self, position: Position) -> None:
        """Every record up to ``position`` is answered and checkpointed: let it go."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """Where rows go (decisions, rejects, replay records); durable on :meth:`sync`."""

    def write(self, rows: Sequence[Mapping[str, Any]], upto: Position) -> None:
        """Take ``rows``, which answer the input up to the source position ``upto``."""
        ...

    def sync(self) -> Position:
        """Make every row taken so far durable; return the position to checkpoint."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SinkOpener(Protocol):
    """Opens a sink for a run: fresh, new, or resumed at a checkpointed position.

    Locking belongs here too: a sink that another run is writing must refuse to open.
    """

    def __call__(self, opening: Opening, position: Position | None) -> Sink: ...


@runtime_checkable
class SharedLearning(Protocol):
    """Learning shared with other runs on the same stream: a fleet of workers that act as
    one online cascade (:mod:`tiered.online.fleet`). None of a run's business otherwise."""

    def start(self, cascade: OnlineCascade, resumed: bool) -> None:
        """The cascade is built and restored (``resumed``: from this run's checkpoint)."""
        ...

    def after_batch(self, items: Sequence[Item], decisions: Sequence[OnlineDecision]) -> None:
        """A batch was answered and its output written."""
        ...

    def close(self, completed: bool) -> None:
        """The run ended (``completed``: cleanly, after its last checkpoint)."""
        ...


__all__ = [
    "Batch",
    "Opening",
    "Position",
    "Rejected",
    "SharedLearning",
    "Sink",
    "SinkOpener",
    "Source",
]
