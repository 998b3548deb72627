"""Input streams for ``tiered run``: JSONL, CSV, Parquet or stdin, read in batches.

A source yields :class:`SourceBatch` es of at most ``batch_size`` *records*. Every record
has a stable **offset** (its 0-based position in the input: the line index for JSONL,
the data-row index for CSV and Parquet), so a run that committed offset ``k`` resumes
with ``source.batches(start=k)`` and sees exactly the records it has not handled yet.
The offset is the position token of these sources in :mod:`tiered.runner` (they
implement its ``Source`` protocol).

A record becomes an :class:`~tiered.core.Item`: ``input`` is the text field, ``id`` the
id field (default: the line number for JSONL, the 1-based row number otherwise) and
``fields`` every other field of the record (the expert's label column, say). A bad
record (invalid JSON, not an object, a missing/null/empty/non-string text field, a bad
id, a missing required field, a CSV row with the wrong number of cells, and with
``FieldMap.unique_ids`` an id an earlier record had) is not an item: it is returned as a
:class:`Reject` naming file, line and field, and the stream goes on.
Problems of the whole file (not found, a column missing from the header or schema) raise
:class:`~tiered.errors.DataError` at once.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from tiered.core.items import Item
from tiered.errors import DataError
from tiered.io.seen_ids import SeenIds

SourceFormat = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
STDIN = "-"

_SUFFIXES: dict[str, SourceFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True, slots=True)
class FieldMap:
    """Which record fields are the text, the id, the gold label, and which must be present."""

    text_field: str = "text"
    id_field: str | None = None
    label_field: str | None = None
    required_fields: tuple[str, ...] = ()
    # reject a record whose id an earlier record had (each id is answered once); only
    # with an id field: line and row numbers are unique anyway
    unique_ids: bool = False

    def columns(self) -> list[str]:
        """Every field a file must have (for header and schema checks)."""
        cols = [self.text_field, self.id_field, *self.required_fields]
        return list(dict.fromkeys(c for c in cols if c))


@dataclass(slots=True)
class Reject:
    """A record that could not become an item, and why."""

    offset: int
    line: int | None
    field: str | None
    reason: str  # located: "data.jsonl:7, field 'text': is missing"
    raw: str

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass(slots=True)
class SourceBatch:
    """Up to ``batch_size`` consecutive records: the good ones as items, the rest rejected.

    ``end`` is the offset just after the last record of the batch: the resume point once
    the batch is fully handled.
    """

    items: list[Item]
    offsets: list[int]
    gold: list[str | None]
    rejects: list[Reject]
    start: int
    end: int

    @property
    def n_records(self) -> int:
        return self.end - self.start


@dataclass
class _Bad(Exception):
    field: str | None
    message: str


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def duplicate_reject(
    path: str, id_field: str | None, item_id: str, offset: int, line: int | None, raw: str
) -> Reject:
    """The reject of a record whose id an earlier record of the input had."""
    why = f"duplicate id {_show(item_id)}: an earlier record has it (each id is answered once)"
    where = str(DataError(why, path=path, line=line, field=id_field))
    return Reject(offset, line, id_field, where, raw)


def detect_format(path: str, format: str | None = None) -> SourceFormat:
    """The format of ``path``: ``format`` when given, else from the file extension."""
    if format is not None:
        if format not in FORMATS:
            raise DataError(
                f"unknown input format {format!r}; known formats: {', '.join(FORMATS)}",
                field="format",
            )
        return format  # type: ignore[return-value]
    if path == STDIN:
        return "jsonl"
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(
            "cannot tell the input format from the file name; use a .jsonl, .csv or .parquet "
            "extension or pass --format",
            path=path,
        )
    return fmt


class FileSource:
    """A record stream with stable offsets; subclasses parse one format."""

    format: SourceFormat = "jsonl"

    def __init__(self, path: str, fields: FieldMap, *, stream: IO[bytes] | None = None) -> None:
        self.path = path
        self.fields = fields
        self.name = "<stdin>" if path == STDIN else path
        # read in the place of stdin (stdin's first lines read ahead, then the rest of it)
        self.stream = stream

    def _open(self) -> IO[bytes]:
        if self.stream is not None and self.path == STDIN:
            return self.stream
        return _open_binary(self.path)

    def _close(self, handle: IO[bytes]) -> None:
        if handle is not sys.stdin.buffer and handle is not self.stream:
            handle.close()

    def _records(self, start: int) -> Iterator[tuple[int, int | None, Any, str | None]]:
        """Yield (offset, line, record dict or _Bad, raw text) from offset ``start`` on."""
        raise NotImplementedError

    def _default_id(self, offset: int, line: int | None) -> str:
        return str(offset + 1)

    def _item(self, obj: Any, offset: int, line: int | None) -> tuple[Item, str | None]:
        """A record as an item and its gold label, or raise _Bad naming the field.

        The hot path of reading: exact type checks first, messages only when failing.
        """
        if type(obj) is not dict:
            raise _Bad(None, f"must be a JSON object. Got {_show(obj)} instead")
        fm = self.fields
        tf = fm.text_field
        text = obj.get(tf)
        if type(text) is not str or not text or text.isspace():
            if tf not in obj:
                raise _Bad(tf, "is missing (the text field)")
            if text is None:
                raise _Bad(tf, "is null (the text field)")
            if not isinstance(text, str):
                raise _Bad(tf, f"must be a string (the text field). Got {_show(text)} instead")
            raise _Bad(tf, "is empty (the text field)")
        idf = fm.id_field
        rid: Any
        if idf is not None:
            rid = obj.get(idf)
            kind = type(rid)
            if kind is int:
                rid = str(rid)
            elif kind is not str or not rid.strip():
                if rid == "" or (kind is str and rid.isspace()):
                    raise _Bad(idf, "is empty (the id)")
                got = "It is missing" if idf not in obj else f"Got {_show(rid)} instead"
                raise _Bad(idf, f"must be a non-empty string or integer (the id). {got}")
        else:
            rid = self._default_id(offset, line)
        for name in fm.required_fields:
            v = obj.get(name)
            if v is None or v == "":
                raise _Bad(name, "is missing or empty (a required field)")
        gold: str | None = None
        if fm.label_field is not None:
            g = obj.get(fm.label_field)
            if g is not None and g != "":
                kind = type(g)
                if kind is not str and kind is not int:
                    raise _Bad(
                        fm.label_field,
                        f"must be a string or integer (the gold label). Got {_show(g)} instead",
                    )
                gold = g if kind is str else str(g)
        extra = dict(obj)
        del extra[tf]
        return Item(id=rid, input=text, fields=extra), gold

    def batches(
        self, start: Any = None, batch_size: int = 256, max_records: int | None = None
    ) -> Iterator[SourceBatch]:
        """Batches of records from offset ``start`` (None: 0) on, at most ``max_records``."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        start = 0 if start is None else int(start)
        limit = None if max_records is None else start + max_records
        fm = self.fields
        seen = SeenIds() if fm.unique_ids and fm.id_field is not None else None
        records = self._records(start if seen is None else 0)
        if seen is not None and start > 0:
            records = self._skip_remembering(records, start, seen)
        items: list[Item] = []
        offsets: list[int] = []
        gold: list[str | None] = []
        rejects: list[Reject] = []
        where: list[tuple[int | None, str]] = []  # each item's line and raw text
        first = start
        end = start
        for offset, line, obj, raw in records:
            if limit is not None and offset >= limit:
                break
            end = offset + 1
            try:
                if isinstance(obj, _Bad):
                    raise obj
                item, g = self._item(obj, offset, line)
            except _Bad as bad:
                rejects.append(self._reject(bad, offset, line, raw))
            else:
                items.append(item)
                offsets.append(offset)
                gold.append(g)
                where.append((line, raw or ""))
            if end - first >= batch_size:
                yield self._batch(seen, items, offsets, gold, rejects, where, first, end)
                items, offsets, gold, rejects, where = [], [], [], [], []
                first = end
        if end > first:
            yield self._batch(seen, items, offsets, gold, rejects, where, first, end)

    def _reject(self, bad: _Bad, offset: int, line: int | None, raw: str | None) -> Reject:
        where = str(DataError(bad.message, path=self.name, line=line, field=bad.field))
        return Reject(offset, line, bad.field, where, raw or "")

    def _batch(
        self,
        seen: SeenIds | None,
        items: list[Item],
        offsets: list[int],
        gold: list[str | None],
        rejects: list[Reject],
        where: list[tuple[int | None, str]],
        first: int,
        end: int,
    ) -> SourceBatch:
        """The batch, with the items whose id came before moved to the rejects."""
        if seen is None or not items:
            return SourceBatch(items, offsets, gold, rejects, first, end)
        dup = seen.add([it.id for it in items])
        if not dup.any():
            return SourceBatch(items, offsets, gold, rejects, first, end)
        keep = [i for i in range(len(items)) if not dup[i]]
        for i in np.flatnonzero(dup):
            line, raw = where[i]
            idf = self.fields.id_field
            rejects.append(duplicate_reject(self.name, idf, items[i].id, offsets[i], line, raw))
        rejects.sort(key=lambda r: r.offset)
        return SourceBatch(
            [items[i] for i in keep],
            [offsets[i] for i in keep],
            [gold[i] for i in keep],
            rejects,
            first,
            end,
        )

    def _skip_remembering(
        self, records: Iterator[tuple[int, int | None, Any, str | None]], start: int, seen: SeenIds
    ) -> Iterator[tuple[int, int | None, Any, str | None]]:
        """The records from offset ``start`` on; the ids of the good records before it go
        into ``seen``, so a resumed run rejects the ids it answered before the kill."""
        ids: list[str] = []
        for record in records:
            offset, line, obj, _ = record
            if offset >= start:
                seen.add(ids)
                ids = []
                yield record
            elif not isinstance(obj, _Bad):
                try:
                    ids.append(self._item(obj, offset, line)[0].id)
                except _Bad:
                    continue
                if len(ids) >= 4096:
                    seen.add(ids)
                    ids = []
        seen.add(ids)

    def records_hint(self) -> int | None:
        """Total records, for a progress bar: Parquet metadata, or a newline count (< 2 GB)."""
        path = self.path
        if path == STDIN or path.lower().endswith(".gz"):
            return None
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                return int(pq.ParquetFile(path).metadata.num_rows)
            if os.path.getsize(path) > 2 * 1024**3:
                return None
            lines = 0
            last = b"\n"
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    lines += chunk.count(b"\n")
                    last = chunk[-1:]
            lines += last != b"\n"
            return max(lines - (self.format == "csv"), 0)
        except (OSError, ValueError):  # only a hint: a bad file is reported when read
            return None

    def acknowledge(self, position: Any) -> None:
        """Nothing to tell a file: its offsets are stable, the store keeps the position."""

    def close(self) -> None:
        """Nothing held open between :meth:`batches` calls."""


def _open_binary(path: str) -> IO[bytes]:
    if path == STDIN:
        return sys.stdin.buffer
    try:
        if path.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError("input file not found", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read input: {exc.strerror}", path=path) from None


class JsonlSource(FileSource):
    """One JSON object per line; blank lines are skipped (they still count as lines)."""

    format: SourceFormat = "jsonl"

    def _default_id(self, offset: int, line: int | None) -> str:
        return str(line)

    def _records(self, start: int) -> Iterator[tuple[int, int | None, Any, str | None]]:
        handle = self._open()
        loads = json.loads
        try:
            for offset, raw in enumerate(handle):
                if offset < start or raw.isspace():
                    continue
                obj: Any
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("utf-8", "replace")
                    obj = _Bad(None, "is not valid UTF-8")
                else:
                    try:
                        obj = loads(text)
                    except json.JSONDecodeError as exc:
                        obj = _Bad(None, f"not valid JSON: {exc.msg} (column {exc.colno})")
                    except RecursionError:
                        obj = _Bad(None, "not valid JSON: nested too deeply")
                    except ValueError:  # Python parses integers of at most 4,300 digits
                        obj = _Bad(None, "not valid JSON: a number of more than 4,300 digits")
                yield offset, offset + 1, obj, text.rstrip("\r\n")
        finally:
            self._close(handle)


class CsvSource(FileSource):
    """A header row, then one record per row (cells are strings)."""

    format: SourceFormat = "csv"

    def _records(self, start: int) -> Iterator[tuple[int, int | None, Any, str | None]]:
        binary = self._open()
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        # long texts (articles, transcripts) exceed csv's default 128 KiB cell limit
        csv.field_size_limit(2**31 - 1)
        reader = csv.reader(text)
        try:
            try:
                header = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise DataError(f"not valid UTF-8 ({exc.reason})", path=self.name, line=1) from None
            except csv.Error as exc:
                raise DataError(f"unreadable CSV: {exc}", path=self.name, line=1) from None
            missing = [c for c in self.fields.columns() if c not in header]
            if missing:
                raise DataError(
                    f"column not in the CSV header; columns: {_one_line(', '.join(header))}",
                    path=self.name,
                    line=1,
                    field=missing[0],
                )
            width = len(header)
            next_line = reader.line_num + 1
            offset = -1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"not valid UTF-8 ({exc.reason})", path=self.name, line=next_line
                    ) from None
                except csv.Error as exc:
                    raise DataError(
                        f"unreadable CSV: {exc}", path=self.name, line=next_line
                    ) from None
                line = next_line
                next_line = reader.line_num + 1
                offset += 1
                if offset < start or not row:
                    continue
                raw = json.dumps(row, ensure_ascii=False)
                if len(row) != width:
                    bad = _Bad(None, f"row has {len(row)} cells, the header has {width}")
                    yield offset, line, bad, raw
                    continue
                yield offset, line, dict(zip(header, row, strict=True)), raw
        finally:
            text.detach()
            self._close(binary)


class ParquetSource(FileSource):
    """A Parquet file, read in record batches (never whole); ``line`` is the 1-based row."""

    format: SourceFormat = "parquet"

    def _records(self, start: int) -> Iterator[tuple[int, int | None, Any, str | None]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.path == STDIN:
            raise DataError("Parquet cannot be read from stdin; give a file path", field="format")
        try:
            pf = pq.ParquetFile(self.path)
        except FileNotFoundError:
            raise DataError("input file not found", path=self.path) from None
        except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet: {_one_line(exc)}", path=self.path) from None
        schema = pf.schema_arrow
        names = list(schema.names)
        missing = [c for c in self.fields.columns() if c not in names]
        if missing:
            raise DataError(
                f"column not in the Parquet schema; columns: {', '.join(names)}",
                path=self.path,
                field=missing[0],
            )
        ttype = schema.field(self.fields.text_field).type
        if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)):
            raise DataError(
                f"the text column must hold strings; it holds {ttype}",
                path=self.path,
                field=self.fields.text_field,
            )
        # Skip whole row groups before `start` without reading them.
        groups: list[int] = []
        offset = 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if offset + rows <= start and not groups:
                offset += rows
                continue
            groups.append(g)
        try:
            for batch in pf.iter_batches(batch_size=4096, row_groups=groups):
                if offset + batch.num_rows <= start:
                    offset += batch.num_rows
                    continue
                skip = max(0, start - offset)
                rows = batch.slice(skip).to_pylist()
                offset += skip
                for rec in rows:
                    raw = json.dumps(rec, ensure_ascii=False, default=str)
                    yield offset, offset + 1, rec, raw
                    offset += 1
        # pyarrow raises OSError for corrupt pages, UnicodeDecodeError for bad strings
        except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
            raise DataError(
                f"cannot read Parquet: {_one_line(exc)}", path=self.path, line=offset + 1
            ) from None


def _one_line(what: object) -> str:
    """An error message (or a header) on one line, cut to a readable length."""
    text = " ".join(str(what).split())
    return text if len(text) <= 200 else text[:197] + "..."


def open_source(
    path: str | Path,
    fields: FieldMap | None = None,
    format: str | None = None,
    *,
    stream: IO[bytes] | None = None,
) -> FileSource:
    """A source for ``path`` (``-`` for stdin), its format from ``format`` or the extension.

    ``stream``: read in the place of stdin (left open: the caller owns it).
    """
    p = str(path)
    fm = fields or FieldMap()
    fmt = detect_format(p, format)
    if p != STDIN and not Path(p).exists():
        raise DataError("input file not found", path=p)
    cls = {"jsonl": JsonlSource, "csv": CsvSource, "parquet": ParquetSource}[fmt]
    return cls(p, fm, stream=stream)


__all__ = [
    "FORMATS",
    "STDIN",
    "CsvSource",
    "FieldMap",
    "FileSource",
    "JsonlSource",
    "ParquetSource",
    "Reject",
    "SourceBatch",
    "SourceFormat",
    "detect_format",
    "duplicate_reject",
    "open_source",
]
