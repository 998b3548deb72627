"""Outputs of ``tiered run``: append-only files whose committed length the store records.

Exactly-once output rests on one rule: a file is flushed and fsynced *before* the store
commits its length, and on restart the file is truncated back to the committed length.
Whatever was written after the last checkpoint is dropped and written again, once.

Each file is locked (an advisory ``flock``) while a run writes it, so a second run on the
same output fails at once instead of interleaving lines. A file that already holds data
when a *new* run starts (``committed=None``: no saved run knows it) is refused rather than
truncated. The writers here are the file sinks of :mod:`tiered.runner` (its ``Sink``
protocol): their position token is the committed byte length.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from tiered.errors import StoreError

OutputFormat = Literal["jsonl", "csv"]
OUTPUT_COLUMNS: tuple[str, ...] = (
    "id",
    "label",
    "stage",
    "confidence",
    "cost",
    "audited",
    "expert_label",
    "cheap_label",
)


# One encoder for every line: json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def _lock(f: IO[bytes], path: Path) -> None:
    """Claim ``path`` for this process until ``f`` is closed (however the process ends)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unguarded
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StoreError(
            f"another tiered run is writing {path}; wait for it to end or write to another "
            "output (two runs on one file would write lines twice and break them)"
        ) from None


class AppendFile:
    """An append-only file resumed at a committed byte length, locked while open.

    ``committed`` is the byte length a checkpoint made durable; ``None`` means a new run
    that no saved state knows of: the file must then be missing or empty. The file is
    created on the first write (no empty reject file when nothing was rejected). Opening
    truncates anything beyond ``committed``: bytes from a run that was killed after
    writing them but before committing them.
    """

    def __init__(self, path: str | Path, committed: int | None = 0, *, header: bytes = b"") -> None:
        self.path = Path(path)
        self.header = header
        self._f: IO[bytes] | None = None
        self._new = committed is None
        self._size = committed or 0
        if self.path.exists():
            self.open()
        elif self._size > 0:
            raise StoreError(
                f"{self.path} is gone but the state store committed {self._size} bytes of it; "
                "start over with --fresh"
            )

    def open(self) -> IO[bytes]:
        """Open (creating if needed), lock, and drop every byte beyond the committed length."""
        if self._f is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
            f: IO[bytes] = os.fdopen(fd, "r+b")
            try:
                _lock(f, self.path)  # before looking at or cutting anything
                self._check_size(os.fstat(fd).st_size)
                f.truncate(self._size)
                f.seek(self._size)
                if self._size == 0 and self.header:
                    f.write(self.header)
                    self._size = len(self.header)
            except BaseException:
                f.close()
                raise
            self._f = f
        return self._f

    def _check_size(self, actual: int) -> None:
        if self._new and actual > 0:
            raise StoreError(
                f"{self.path} already holds {actual:,} bytes, but the state store holds no run "
                "that wrote them (the store is missing or empty, or another --store was given): "
                "pass --fresh to start over and overwrite it, or the --store of that run"
            )
        if actual < self._size:
            raise StoreError(
                f"{self.path} holds {actual} bytes but the state store committed {self._size}: "
                "the file was changed or replaced since the last run; start over with --fresh"
            )

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.open().write(data)
        self._size += len(data)

    @property
    def size(self) -> int:
        """Bytes written so far (committed or not)."""
        return self._size

    def sync(self) -> int:
        """Flush and fsync; return the durable length (what the store may now commit)."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
        return self._size

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def output_format(path: str | Path) -> OutputFormat:
    """CSV when the output path ends in ``.csv``, JSONL otherwise."""
    return "csv" if str(path).lower().endswith(".csv") else "jsonl"


def _num(x: float, digits: int) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), digits)


def decision_row(
    id: str,
    label: str | None,
    stage: str,
    confidence: float,
    cost: float,
    audited: bool,
    expert_label: str | None,
    cheap_label: str | None = None,
) -> dict[str, Any]:
    """One output row: what every output sink writes for one decision."""
    out: dict[str, Any] = {
        "id": id,
        "label": label,
        "stage": stage,
        "confidence": _num(confidence, 6),
        "cost": _num(cost, 10),
        "audited": bool(audited),
    }
    if expert_label is not None:
        out["expert_label"] = expert_label
    if cheap_label is not None:
        out["cheap_label"] = cheap_label
    return out


class DecisionWriter:
    """Writes one line per decision: id, label, stage, confidence, cost, audited,
    expert_label, cheap_label (JSONL leaves out the last two when they are None).

    ``committed``: see :class:`AppendFile` (``None``: a new run, the file must be empty).
    """

    def __init__(self, path: str | Path, committed: int | None = 0) -> None:
        self.format = output_format(path)
        header = b""
        if self.format == "csv":
            header = (",".join(OUTPUT_COLUMNS) + "\n").encode()
            _check_csv_header(Path(path), committed or 0, header)
        self.file = AppendFile(path, committed, header=header)
        self.file.open()  # the output exists (and is locked) even when no item was answered

    def write(self, rows: Sequence[Mapping[str, Any]], upto: Any = None) -> None:
        """Append ``rows`` (``upto``, the input position they answer through, is not needed:
        a file is cut back to its own committed length)."""
        if not rows:
            return
        if self.format == "jsonl":
            encode = _ENCODER.encode
            text = "".join([encode(r) + "\n" for r in rows])
        else:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            for r in rows:
                w.writerow(
                    [
                        "" if r.get(c) is None else str(r[c]).lower() if c == "audited" else r[c]
                        for c in OUTPUT_COLUMNS
                    ]
                )
            text = buf.getvalue()
        self.file.write(text.encode("utf-8"))

    def sync(self) -> int:
        return self.file.sync()

    def close(self) -> None:
        self.file.close()


def _check_csv_header(path: Path, committed: int, header: bytes) -> None:
    """Refuse to resume a CSV output whose header has other columns (an older version)."""
    if committed <= 0 or not path.exists() or path.stat().st_size < committed:
        return  # nothing to resume, or AppendFile reports what is wrong
    with path.open("rb") as f:
        first = f.readline()
    if first != header:
        raise StoreError(
            f"{path} has the columns {first.decode('utf-8', 'replace').strip()!r}, not "
            f"{','.join(OUTPUT_COLUMNS)!r} (written by another version of tiered); "
            "start over with --fresh or write to a new output"
        )


class JsonlWriter:
    """Appends JSON objects, one per line (reject files, replay logs).

    ``committed``: see :class:`AppendFile` (``None``: a new run, the file must be empty).
    """

    def __init__(self, path: str | Path, committed: int | None = 0) -> None:
        self.file = AppendFile(path, committed)

    def write(self, rows: Sequence[Mapping[str, Any]], upto: Any = None) -> None:
        if rows:
            encode = _ENCODER.encode
            data = "".join([encode(o) + "\n" for o in rows])
            self.file.write(data.encode("utf-8"))

    def sync(self) -> int:
        return self.file.sync()

    def close(self) -> None:
        self.file.close()


__all__ = [
    "OUTPUT_COLUMNS",
    "AppendFile",
    "DecisionWriter",
    "JsonlWriter",
    "OutputFormat",
    "decision_row",
    "output_format",
]
