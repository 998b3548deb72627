"""Input sources of `tiered run`: JSONL, CSV, Parquet, stdin; stable offsets; rejects."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiered.errors import DataError
from tiered.io.sources import FieldMap, SourceBatch, detect_format, open_source


def _drain(batches: list[SourceBatch]) -> tuple[list[str], list[str], list[int]]:
    ids = [it.id for b in batches for it in b.items]
    texts = [it.text for b in batches for it in b.items]
    offsets = [o for b in batches for o in b.offsets]
    return ids, texts, offsets


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_items_fields_gold_and_default_ids(tmp_path: Path) -> None:
    p = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps({"text": "hello", "label": "A", "gold": "A", "lang": "en"}),
            "",
            json.dumps({"text": "world", "label": "B", "gold": 3}),
        ],
    )
    src = open_source(p, FieldMap(label_field="gold"))
    batches = list(src.batches())
    ids, texts, offsets = _drain(batches)
    assert ids == ["1", "3"]  # line numbers; the blank line counts as a line
    assert texts == ["hello", "world"]
    assert offsets == [0, 2]
    assert batches[0].gold == ["A", "3"]
    item = batches[0].items[0]
    assert item.fields == {"label": "A", "gold": "A", "lang": "en"}
    assert batches[-1].end == 3


def test_jsonl_batches_resume_at_any_offset(tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"r{i}", "text": f"t{i}"}) for i in range(23)]
    p = _write_jsonl(tmp_path / "in.jsonl", lines)
    src = open_source(p, FieldMap(id_field="id"))
    full, _, _ = _drain(list(src.batches(batch_size=5)))
    assert full == [f"r{i}" for i in range(23)]
    for k in (0, 1, 5, 7, 22, 23, 30):
        batches = list(src.batches(start=k, batch_size=5))
        ids, _, _ = _drain(batches)
        assert ids == full[k:]
        if batches:
            assert batches[0].start == k
            assert all(b.n_records <= 5 for b in batches)
    limited, _, _ = _drain(list(src.batches(start=3, batch_size=4, max_records=7)))
    assert limited == full[3:10]


def test_jsonl_bad_records_are_rejected_with_reasons_and_stream_continues(tmp_path: Path) -> None:
    p = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "a", "text": "fine"}),
            "{not json",
            json.dumps(["a", "list"]),
            json.dumps({"id": "b"}),
            json.dumps({"id": "c", "text": None}),
            json.dumps({"id": "d", "text": "   "}),
            json.dumps({"id": "e", "text": 42}),
            json.dumps({"id": ["x"], "text": "bad id"}),
            json.dumps({"id": "f", "text": "no expert label"}),
            json.dumps({"id": "g", "text": "also fine", "label": "X"}),
        ],
    )
    src = open_source(p, FieldMap(id_field="id", required_fields=("label",)))
    batches = list(src.batches(batch_size=3))
    ids, _, _ = _drain(batches)
    assert ids == ["g"]  # "a" lacks the required label too
    rejects = [r for b in batches for r in b.rejects]
    assert [r.line for r in rejects] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [r.offset for r in rejects] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    by_line = {r.line: r for r in rejects}
    assert by_line[2].field is None and "not valid JSON" in by_line[2].reason
    assert "must be a JSON object" in by_line[3].reason
    assert by_line[4].field == "text" and "is missing" in by_line[4].reason
    assert "is null" in by_line[5].reason
    assert "is empty" in by_line[6].reason
    assert "must be a string" in by_line[7].reason and "42" in by_line[7].reason
    assert by_line[8].field == "id"
    assert by_line[9].field == "label" and "required" in by_line[9].reason
    # every reason is located: file:line and field
    assert by_line[4].reason.startswith(f"{p}:4, field 'text': ")
    assert by_line[2].raw == "{not json"
    assert json.loads(json.dumps(by_line[7].to_json()))["raw"] == json.dumps(
        {"id": "e", "text": 42}
    )


def test_jsonl_invalid_utf8_line_is_a_reject(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n{"text": "ok2"}\n')
    batches = list(open_source(p).batches())
    assert _drain(batches)[1] == ["ok", "ok2"]
    (rej,) = [r for b in batches for r in b.rejects]
    assert rej.line == 2 and "UTF-8" in rej.reason


def test_gzipped_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert _drain(list(open_source(p).batches()))[1] == ["zipped"]


def test_csv_rows_quoted_cells_and_rejects(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text(
        "\ufeffid,text,label\n"
        'a,"hello, world",X\n'
        'b,"two\nlines",Y\n'
        "c,,Z\n"
        "d,too,many,cells\n"
        "e,last,X\n",
        encoding="utf-8",
    )
    src = open_source(p, FieldMap(id_field="id", label_field="label"))
    batches = list(src.batches(batch_size=2))
    ids, texts, offsets = _drain(batches)
    assert ids == ["a", "b", "e"]
    assert texts == ["hello, world", "two\nlines", "last"]
    assert offsets == [0, 1, 4]
    rejects = [r for b in batches for r in b.rejects]
    assert [(r.offset, r.line, r.field) for r in rejects] == [(2, 5, "text"), (3, 6, None)]
    assert "4 cells, the header has 3" in rejects[1].reason
    assert [g for b in batches for g in b.gold] == ["X", "Y", "X"]
    # resume in the middle
    assert _drain(list(src.batches(start=2)))[0] == ["e"]


def test_csv_default_ids_are_row_numbers(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("text\nfirst\nsecond\n", encoding="utf-8")
    assert _drain(list(open_source(p).batches()))[0] == ["1", "2"]


def test_csv_missing_column_names_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("id,body\n1,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"in\.csv:1, field 'text': column not in the CSV header"):
        list(open_source(p).batches())


def _parquet(tmp_path: Path, n: int) -> Path:
    texts = [f"text {i}" for i in range(n)]
    texts[7] = None  # type: ignore[call-overload]
    texts[8] = ""
    table = pa.table({"id": [f"p{i}" for i in range(n)], "text": texts, "label": ["A"] * n})
    p = tmp_path / "in.parquet"
    pq.write_table(table, p, row_group_size=10)
    return p


def test_parquet_batches_skip_row_groups_and_reject_nulls(tmp_path: Path) -> None:
    p = _parquet(tmp_path, 35)
    src = open_source(p, FieldMap(id_field="id"))
    batches = list(src.batches(batch_size=8))
    ids, _, _ = _drain(batches)
    assert ids == [f"p{i}" for i in range(35) if i not in (7, 8)]
    rejects = [r for b in batches for r in b.rejects]
    assert [(r.offset, r.field) for r in rejects] == [(7, "text"), (8, "text")]
    assert "is null" in rejects[0].reason and "is empty" in rejects[1].reason
    assert json.loads(rejects[0].raw)["id"] == "p7"
    for k in (0, 9, 10, 11, 25, 34, 35):
        assert _drain(list(src.batches(start=k, batch_size=4)))[0] == [
            x for x in ids if int(x[1:]) >= k
        ]


def test_parquet_text_column_must_hold_strings(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), p)
    with pytest.raises(DataError, match=r"field 'text': the text column must hold strings"):
        list(open_source(p).batches())


@pytest.mark.parametrize(
    ("fmt", "payload", "expected"),
    [
        ("jsonl", b'{"text": "from stdin"}\n{"text": ""}\n', ["from stdin"]),
        ("csv", b"text,label\nfrom stdin,A\n,B\n", ["from stdin"]),
    ],
)
def test_stdin(
    monkeypatch: pytest.MonkeyPatch, fmt: str, payload: bytes, expected: list[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    batches = list(open_source("-", format=fmt).batches())
    assert _drain(batches)[1] == expected
    (rej,) = [r for b in batches for r in b.rejects]
    assert rej.reason.startswith("<stdin>:") and rej.field == "text"


def test_format_detection_and_unknown_files(tmp_path: Path) -> None:
    assert detect_format("a.JSONL") == "jsonl"
    assert detect_format("a.csv.gz") == "csv"
    assert detect_format("-") == "jsonl"
    assert detect_format("a.txt", "csv") == "csv"
    with pytest.raises(DataError, match=r"a\.txt: cannot tell the input format"):
        detect_format("a.txt")
    with pytest.raises(DataError, match="unknown input format 'xml'"):
        detect_format("a.jsonl", "xml")
    with pytest.raises(DataError, match=r"nope\.jsonl: input file not found"):
        open_source(tmp_path / "nope.jsonl")
