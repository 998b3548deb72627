"""Outputs of ``tiered run``: append-only files whose committed length the store records.

Exactly-once output rests on one rule: a file is flushed and fsynced *before* the store
commits its length, and on restart the file is truncated back to the committed length.
Whatever was written after the last checkpoint is dropped and written again, once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
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


class AppendFile:
    """An append-only file resumed at a committed byte length.

    The file is created on the first write (no empty reject file when nothing was
    rejected). Opening truncates anything beyond ``committed``: bytes from a run that was
    killed after writing them but before committing them.
    """

    def __init__(self, path: str | Path, committed: int = 0, *, header: bytes = b"") -> None:
        self.path = Path(path)
        self.header = header
        self._f: IO[bytes] | None = None
        self._size = committed
        if self.path.exists():
            actual = self.path.stat().st_size
            if actual < committed:
                raise StoreError(
                    f"{self.path} holds {actual} bytes but the state store committed {committed}: "
                    "the file was changed or replaced since the last run; start over with --fresh"
                )
            self.open()
        elif committed > 0:
            raise StoreError(
                f"{self.path} is gone but the state store committed {committed} bytes of it; "
                "start over with --fresh"
            )

    def open(self) -> IO[bytes]:
        """Open (creating if needed) and drop every byte beyond the committed length."""
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = "r+b" if self.path.exists() else "w+b"
            f: IO[bytes] = open(self.path, mode)  # noqa: SIM115 - closed in close()
            f.truncate(self._size)
            f.seek(self._size)
            if self._size == 0 and self.header:
                f.write(self.header)
                self._size = len(self.header)
            self._f = f
        return self._f

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


class DecisionWriter:
    """Writes one line per decision: id, label, stage, confidence, cost, audited,
    expert_label, cheap_label (JSONL leaves out the last two when they are None)."""

    def __init__(self, path: str | Path, committed: int = 0) -> None:
        self.format = output_format(path)
        header = b""
        if self.format == "csv":
            header = (",".join(OUTPUT_COLUMNS) + "\n").encode()
            _check_csv_header(Path(path), committed, header)
        self.file = AppendFile(path, committed, header=header)
        self.file.open()  # the output exists even when no item was answered

    @staticmethod
    def row(
        id: str,
        label: str | None,
        stage: str,
        confidence: float,
        cost: float,
        audited: bool,
        expert_label: str | None,
        cheap_label: str | None = None,
    ) -> dict[str, Any]:
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

    def write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
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
    """Appends JSON objects, one per line (reject files, replay logs)."""

    def __init__(self, path: str | Path, committed: int = 0) -> None:
        self.file = AppendFile(path, committed)

    def write(self, objs: Sequence[dict[str, Any]]) -> None:
        if objs:
            encode = _ENCODER.encode
            data = "".join([encode(o) + "\n" for o in objs])
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
    "output_format",
]
