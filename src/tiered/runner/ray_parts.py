"""A batch run's partitions as Arrow tables: read from the input, written as Parquet.

One table shape flows through every step (:data:`COLUMNS`): a row per input record,
good or rejected, with the partition and offset it came from (``_part``, ``_offset``),
how many rows its partition holds (``_n``: the writer knows a partition is whole), the
item (``id``, ``text``, ``fields`` as JSON, ``gold``) or the reason it was rejected
(``reject``), and the decision columns the stages fill in (``stage`` None: still open).
``_audit`` marks an accepted answer drawn for an audit, ``_truth`` holds the expert's
label column when it is free to read, ``_xcost`` what the expert cost (NaN: not called).

A finished partition becomes ``part-NNNNNN.parquet`` (the decision columns of
:func:`tiered.io.sinks.decision_row`, in input order) with its counts (:class:`Tally`)
in the file's metadata, so a resumed run adds them up without reading the answers.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.core.items import Item
from tiered.errors import StoreError
from tiered.io.sources import FieldMap, duplicate_reject, open_source
from tiered.online.fleet import tally_row
from tiered.runner.counters import RunCounters
from tiered.runner.ray_plan import InputFile, OutDir, Partition, write_atomic

if TYPE_CHECKING:
    import pyarrow as pa

    from tiered.online import OnlineDecision

OUTPUT = ("id", "label", "stage", "confidence", "cost", "audited", "expert_label", "cheap_label")
_TYPES = {
    "_part": "int32",
    "_offset": "int64",
    "_n": "int32",
    "id": "string",
    "text": "string",
    "fields": "string",
    "gold": "string",
    "reject": "string",
    "label": "string",
    "stage": "string",
    "confidence": "float64",
    "cost": "float64",
    "audited": "bool_",
    "expert_label": "string",
    "cheap_label": "string",
    "_audit": "bool_",
    "_truth": "string",
    "_xcost": "float64",
}
COLUMNS = tuple(_TYPES)
# what the last step hands back: no texts
FINAL = tuple(c for c in COLUMNS if c not in ("text", "fields", "_audit"))
META_KEY = b"tiered"


def arrow_type(name: str) -> pa.DataType:
    import pyarrow as pa

    return getattr(pa, _TYPES[name])()


def make_table(cols: Mapping[str, Sequence[Any] | np.ndarray], names: Sequence[str]) -> pa.Table:
    """A table of ``names`` in :data:`COLUMNS` types (missing columns: all null)."""
    import pyarrow as pa

    n = len(next(iter(cols.values()))) if cols else 0
    arrays = [
        pa.array(cols[c], arrow_type(c)) if c in cols else pa.nulls(n, arrow_type(c)) for c in names
    ]
    return pa.Table.from_arrays(arrays, names=list(names))


def read_partition(
    part: Partition,
    f: InputFile,
    fields: FieldMap,
    prefix_ids: bool,
    duplicates: Collection[int] = (),
) -> pa.Table:
    """The records of one partition (items and rejects), every column of :data:`COLUMNS`.

    ``prefix_ids``: ids that are line or row numbers get the file's name in front
    (``sub/a.jsonl:7``), unique over a folder of files. ``duplicates``: the offsets of
    records whose id an earlier record had (:func:`~tiered.runner.ray_plan.find_duplicates`),
    rejected.
    """
    source = open_source(f.path, fields, format=f.format)
    limit = None if part.end is None else part.end - part.start
    offsets: list[int] = []
    ids: list[str | None] = []
    texts: list[str | None] = []
    extra: list[str | None] = []
    gold: list[str | None] = []
    rejects: list[str | None] = []
    dumps = json.dumps
    prefix = f"{f.name}:" if prefix_ids and fields.id_field is None else ""
    for b in source.batches(start=part.start, batch_size=4096, max_records=limit):
        for it, off, g in zip(b.items, b.offsets, b.gold, strict=True):
            offsets.append(off)
            if duplicates and off in duplicates:
                ids.append(None)
                texts.append(None)
                extra.append(None)
                gold.append(None)
                rejects.append(dumps(_duplicate(it, off, f, fields), ensure_ascii=False))
                continue
            ids.append(prefix + it.id)
            texts.append(it.text)
            extra.append(dumps(it.fields, ensure_ascii=False, default=str) if it.fields else None)
            gold.append(g)
            rejects.append(None)
        for r in b.rejects:
            offsets.append(r.offset)
            ids.append(None)
            texts.append(None)
            extra.append(None)
            gold.append(None)
            rejects.append(dumps(r.to_json(), ensure_ascii=False))
    n = len(offsets)
    cols: dict[str, Any] = {
        "_part": np.full(n, part.index, dtype=np.int32),
        "_offset": offsets,
        "_n": np.full(n, n, dtype=np.int32),
        "id": ids,
        "text": texts,
        "fields": extra,
        "gold": gold,
        "reject": rejects,
        "cost": np.zeros(n),
        "audited": np.zeros(n, dtype=bool),
        "_audit": np.zeros(n, dtype=bool),
        "_xcost": np.full(n, np.nan),  # NaN: the expert was not called
    }
    return make_table(cols, COLUMNS)


def _duplicate(item: Item, offset: int, f: InputFile, fields: FieldMap) -> dict[str, Any]:
    """The reject of a record whose id an earlier record had (as ``tiered run`` writes it;
    the record as read, for its raw text)."""
    idf = fields.id_field
    line = offset + 1 if f.format == "jsonl" else None  # CSV: a cell may span lines
    record: dict[str, Any] = {str(idf): item.id, fields.text_field: item.text, **item.fields}
    raw = json.dumps(record, ensure_ascii=False, default=str)
    return duplicate_reject(f.name, idf, item.id, offset, line, raw).to_json()


def items_of(table: pa.Table, rows: np.ndarray) -> list[Item]:
    """The items of ``rows`` (positions in ``table``)."""
    take = table.select(["id", "text", "fields"]).take(rows).to_pydict()
    loads = json.loads
    return [
        Item(id=i, input=t, fields=loads(f) if f else {})
        for i, t, f in zip(take["id"], take["text"], take["fields"], strict=True)
    ]


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as numpy (strings as objects, None where null)."""
    values: np.ndarray = table.column(name).to_numpy(zero_copy_only=False)
    return values


def open_rows(table: pa.Table) -> np.ndarray:
    """Items no stage has answered yet (rejects excepted)."""
    import pyarrow.compute as pc

    mask = pc.and_(pc.is_null(table.column("stage")), pc.is_null(table.column("reject")))
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


def with_columns(table: pa.Table, cols: Mapping[str, Any]) -> pa.Table:
    """``table`` with ``cols`` replaced (values in :data:`COLUMNS` types)."""
    import pyarrow as pa

    for name, values in cols.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.array(values, arrow_type(name)))
    return table


def decisions_table(
    records: pa.Table,
    decisions: Sequence[OnlineDecision],
    truth: Sequence[str | None] | None,
) -> pa.Table:
    """A partition answered by the online cascade (its items in order, then rejects)."""
    import pyarrow as pa

    good = open_rows(records)
    answered = records.take(good)
    cols: dict[str, list[Any]] = {c: [] for c in ("label", "stage", "confidence", "cost")}
    cols |= {"audited": [], "expert_label": [], "cheap_label": []}
    for d in decisions:
        for c in cols:
            cols[c].append(getattr(d, c))
    if truth is not None:
        cols["_truth"] = list(truth)
    answered = with_columns(answered, cols)
    rest = records.filter(records.column("reject").is_valid())
    return pa.concat_tables([answered, rest]).select(list(FINAL))


# -- counts ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a partition (or a whole run) counts: the run's counters, the audit counters a
    fleet shares (:func:`tiered.online.fleet.tally_row`), and USD."""

    counters: RunCounters = field(default_factory=RunCounters)
    audit: dict[str, int] = field(default_factory=dict)
    usd: float = 0.0
    expert_usd: float = 0.0
    expert_calls: int = 0

    def add(self, other: Tally) -> None:
        c, o = self.counters, other.counters
        for f in fields(c):
            if f.name == "stage_counts":
                for k, v in o.stage_counts.items():
                    c.stage_counts[k] = c.stage_counts.get(k, 0) + v
            else:
                setattr(c, f.name, getattr(c, f.name) + getattr(o, f.name))
        for k, v in other.audit.items():
            self.audit[k] = self.audit.get(k, 0) + v
        self.usd += other.usd
        self.expert_usd += other.expert_usd
        self.expert_calls += other.expert_calls

    def to_json(self) -> dict[str, Any]:
        return {
            "counters": self.counters.to_json(),
            "audit": self.audit,
            "usd": self.usd,
            "expert_usd": self.expert_usd,
            "expert_calls": self.expert_calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tally:
        return cls(
            RunCounters.from_json(data["counters"]),
            {str(k): int(v) for k, v in data["audit"].items()},
            float(data["usd"]),
            float(data["expert_usd"]),
            int(data["expert_calls"]),
        )

    @classmethod
    def of(cls, final: pa.Table) -> Tally:
        """The counts of a finished partition's rows (columns :data:`FINAL`)."""
        t = cls()
        data = final.to_pydict()
        good = [i for i, r in enumerate(data["reject"]) if r is None]
        c = t.counters
        c.records = final.num_rows
        c.items = len(good)
        c.rejects = final.num_rows - len(good)
        rows = [{k: data[k][i] for k in OUTPUT} for i in good]
        c.count_stages(r["stage"] for r in rows)
        labels = [r["label"] for r in rows]
        truth = [data["_truth"][i] for i in good]
        known = any(x is not None for x in truth)
        c.count_quality(labels, [data["gold"][i] for i in good], truth if known else None)
        for r in rows:
            for k, v in tally_row(r):
                t.audit[k] = t.audit.get(k, 0) + v
        t.usd = float(sum(r["cost"] or 0.0 for r in rows))
        paid = np.array([data["_xcost"][i] for i in good], dtype=float)
        called = ~np.isnan(paid)
        t.expert_usd = float(paid[called].sum())
        t.expert_calls = int(called.sum())
        return t


# -- writing -----------------------------------------------------------------------------------


def write_partition(out: OutDir, part: Partition, final: pa.Table, tally: Tally) -> None:
    """The partition's rejects (if any), then its answers in input order: the Parquet
    file, renamed into place last, marks the partition done."""
    import pyarrow.parquet as pq

    final = final.sort_by("_offset")
    bad = final.filter(final.column("reject").is_valid()).column("reject").to_pylist()
    if bad:
        text = "".join(f"{line}\n" for line in bad)
        write_atomic(out.rejects_path(part), lambda p: p.write_text(text, "utf-8"))
    answers = final.filter(final.column("reject").is_null()).select(list(OUTPUT))
    meta = {"partition": part.index, "start": part.start, "end": part.end} | tally.to_json()
    answers = answers.replace_schema_metadata({META_KEY: json.dumps(meta)})
    write_atomic(out.part_path(part), lambda p: pq.write_table(answers, p))


def read_tally(path: Path) -> Tally:
    """The counts of a finished partition, from its file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return Tally.from_json(json.loads(meta[META_KEY]))
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise StoreError(
            f"{path} is not a part file of this tiered version ({type(exc).__name__}: {exc}); "
            "delete it to answer its partition again, or pass --fresh"
        ) from exc


def total(tallies: Iterable[Tally]) -> Tally:
    """The counts of several partitions added up."""
    out = Tally()
    for t in tallies:
        out.add(t)
    return out


__all__ = [
    "COLUMNS",
    "FINAL",
    "OUTPUT",
    "Tally",
    "column",
    "decisions_table",
    "items_of",
    "make_table",
    "open_rows",
    "read_partition",
    "read_tally",
    "total",
    "with_columns",
    "write_partition",
]
