"""Each input id is answered once: the bounded-memory seen-set and the sources that use it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tiered.io.seen_ids import SeenIds
from tiered.io.sources import FieldMap, FileSource, open_source


def test_seen_ids_agree_with_a_set_over_many_batches() -> None:
    rng = random.Random(0)
    seen, truth = SeenIds(), set()
    for _ in range(300):
        batch = [f"id-{rng.randrange(20_000)}" for _ in range(rng.randrange(0, 200))]
        want = []
        for x in batch:
            want.append(x in truth)
            truth.add(x)
        assert seen.add(batch).tolist() == want
    assert len(seen) == len(truth)
    assert seen.nbytes == 8 * len(truth)  # 8 bytes an id: 80 MB for 10M ids
    assert len(seen._levels) <= 2 * len(truth).bit_length()  # O(log n) sorted arrays


def _source(path: Path, unique: bool = True) -> FileSource:
    return open_source(path, FieldMap(id_field="id", unique_ids=unique))


def test_a_source_rejects_repeated_ids_from_any_start(tmp_path: Path) -> None:
    ids = ["a", "b", "a", "c", "b", "d", "a"]
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": i, "text": f"t{n}"}) + "\n" for n, i in enumerate(ids))
    )
    batches = list(_source(path).batches(batch_size=2))
    assert [it.id for b in batches for it in b.items] == ["a", "b", "c", "d"]
    rejected = [(r.line, r.field) for b in batches for r in b.rejects]
    assert rejected == [(3, "id"), (5, "id"), (7, "id")]
    # resumed after offset 4: the ids answered before it are still taken
    later = list(_source(path).batches(start=4, batch_size=2))
    assert [it.id for b in later for it in b.items] == ["d"]
    assert [r.line for b in later for r in b.rejects] == [5, 7]
    assert sum(b.n_records for b in later) == 3
    # off (the default): every record is an item, as before
    assert len([it for b in _source(path, unique=False).batches() for it in b.items]) == 7


def test_a_csv_source_rejects_repeated_ids(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,x\n2,y\n1,z\n", encoding="utf-8")
    (batch,) = list(_source(path).batches())
    assert [it.id for it in batch.items] == ["1", "2"]
    (rej,) = batch.rejects
    assert rej.line == 4 and "duplicate id '1'" in rej.reason and rej.raw == '["1", "z"]'
