"""A look at an input file's first record, before a run reads it (to pick defaults)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
from pathlib import Path

from tiered.errors import DataError
from tiered.io.sources import STDIN, detect_format


def first_fields(path: str | Path, format: str | None = None, lines: int = 100) -> list[str] | None:
    """The field names of the input file's first record (a CSV header, a Parquet schema,
    the first JSON object among the first ``lines`` lines); None when there is none to read
    (stdin, an unreadable file: the run itself reports those)."""
    p = str(path)
    try:
        fmt = detect_format(p, format)
        if p == STDIN or not Path(p).is_file():
            return None
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return list(pq.ParquetFile(p).schema_arrow.names)
            except pa.ArrowException:
                return None
        with gzip.open(p, "rb") if p.lower().endswith(".gz") else open(p, "rb") as f:
            if fmt == "csv":
                text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
                try:
                    return next(csv.reader(text), None)
                finally:
                    text.detach()
            for raw, _ in zip(f, range(lines), strict=False):
                if raw.isspace():
                    continue
                with contextlib.suppress(ValueError, RecursionError):
                    obj = json.loads(raw)
                    if isinstance(obj, dict):
                        return list(obj)
    except (DataError, OSError, ValueError, csv.Error):
        return None
    return None


__all__ = ["first_fields"]
