"""Stop a run whose input does not fit its settings before it starts, not after hours.

A misspelt field (``--expert-field lable``) rejects every record; without a check the
run "succeeds" with an empty output. :func:`check_input` reads the first
``window`` records before the run opens its state store or output, and raises a
:class:`~tiered.errors.DataError` (exit 2) when

- every one of them is rejected (an input shorter than the window: all of it), or
- after ``window`` records, more than ``max_share`` of them are rejected for the same field,

naming the field and the fields the records do have. ``max_share`` 1 never stops a run.
Nothing is started, so the corrected command runs as a new run. Stdin is read ahead by
``window`` lines (a run from stdin starts once they came) and handed back in front of the
rest (:func:`read_ahead`).
"""

from __future__ import annotations

import difflib
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from tiered.errors import DataError
from tiered.io.sources import FileSource, Reject, SourceBatch

DEFAULT_MAX_SHARE = 0.5
DEFAULT_WINDOW = 1000
_FIELDS_SHOWN = 20


@dataclass
class RejectGuard:
    """Counts the rejects of a run's first records, by field (see the module docstring)."""

    max_share: float = DEFAULT_MAX_SHARE
    window: int = DEFAULT_WINDOW
    text_field: str | None = None  # an item's fields leave it out: named when items came
    records: int = 0
    rejects: int = 0
    by_field: Counter[str | None] = field(default_factory=Counter)
    lacking: Counter[str] = field(default_factory=Counter)  # rejected records without it
    example: dict[str | None, Reject] = field(default_factory=dict)
    names: dict[str, None] = field(default_factory=dict)  # field names seen, in order

    def see(self, batch: SourceBatch) -> None:
        self.records += batch.n_records
        if batch.items and self.text_field is not None:
            self._names([self.text_field])
        for it in batch.items:
            self._names(it.fields)
        for r in batch.rejects:
            self.rejects += 1
            self.by_field[r.field] += 1
            self.example.setdefault(r.field, r)
            record = _record(r.raw)
            if record is not None:
                self._names(record)
                if r.field is not None and r.field not in record:
                    self.lacking[r.field] += 1

    def _names(self, record: Iterable[str]) -> None:
        if len(self.names) < 10 * _FIELDS_SHOWN:
            self.names.update(dict.fromkeys(record))

    def problem(self, source: str) -> DataError | None:
        """The error that stops the run, or None (call once the window is read)."""
        if self.max_share >= 1 or not self.rejects:
            return None
        (name, count), *_ = self.by_field.most_common(1)
        n = self.records
        every = self.rejects == n and n < self.window
        if not every and (n < self.window or count <= self.max_share * n):
            return None
        scope = f"{n:,} records" if n < self.window else f"first {n:,} records"
        if name is not None and self.lacking[name] == count == n:
            what = "no record has this field" if n < self.window else f"none of the {scope} has it"
        elif name is not None and self.lacking[name] == count:
            what = f"{count:,} of the {scope} lack this field"
        else:
            why = self.example[name].reason
            what = f"{count:,} of the {scope} were rejected for it, e.g. {why}"
            if name is None:
                what = f"{count:,} of the {scope} were rejected, e.g. {why}"
        names = [k for k in self.names if k != name]
        if names:
            more = ", ..." if len(names) > _FIELDS_SHOWN else ""
            what += f"; records have: {', '.join(names[:_FIELDS_SHOWN])}{more}"
            close = difflib.get_close_matches(name or "", names, n=1)
            if close:
                what += f" (did you mean '{close[0]}'?)"
        what += ". Nothing was run (--max-reject-share 1 would run it anyway)"
        return DataError(what, path=source, field=name)


def _record(raw: str) -> dict[str, object] | None:
    """A rejected record's fields, when its raw text is a JSON object."""
    if not raw.startswith("{"):
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def check_input(
    source: FileSource,
    *,
    max_share: float = DEFAULT_MAX_SHARE,
    window: int = DEFAULT_WINDOW,
    limit: int | None = None,
) -> None:
    """Read the first ``window`` records (at most ``limit``) of ``source``; raise the
    :class:`DataError` of :class:`RejectGuard` when they show the settings are wrong."""
    if max_share >= 1:
        return
    guard = RejectGuard(max_share=max_share, window=window, text_field=source.fields.text_field)
    n = window if limit is None else min(window, limit)
    for batch in source.batches(batch_size=min(n, 1024) or 1, max_records=n):
        guard.see(batch)
    problem = guard.problem(source.name)
    if problem is not None:
        raise problem


class _Prefixed(io.RawIOBase):
    """Bytes already read, then the rest of a stream (which it never closes)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head = memoryview(head)
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read1(len(buffer))  # type: ignore[attr-defined]
        buffer[: len(data)] = data
        return len(data)


def read_ahead(stream: IO[bytes], lines: int) -> tuple[bytes, IO[bytes]]:
    """The first ``lines`` lines of ``stream``, and a stream reading them again, then the rest."""
    head = b"".join(stream.readline() for _ in range(lines))
    return head, io.BufferedReader(_Prefixed(head, stream))


__all__ = [
    "DEFAULT_MAX_SHARE",
    "DEFAULT_WINDOW",
    "RejectGuard",
    "check_input",
    "read_ahead",
]
