"""The runner works with any Source/Sink whose positions are opaque JSON tokens.

An in-memory "stream" stands in for Redis Streams: positions are entry-id strings, the
sink's position is a dict, the sink acknowledges input itself. A run stopped part-way
resumes from the tokens the checkpoint stored, and every id is answered exactly once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tiered.core.items import Item
from tiered.io.sinks import DecisionWriter, JsonlWriter
from tiered.io.sources import open_source
from tiered.runner import (
    Endpoints,
    Opening,
    RunCounters,
    RunPlan,
    Sink,
    Source,
    StreamRun,
    quick_config,
)
from tiered.store import RunStore


@dataclass
class StreamBatch:
    items: list[Item]
    gold: list[str | None]
    rejects: list[Any]
    end: str
    n_records: int


class MemoryStream:
    """Records with entry ids ``0-1``, ``0-2``...; a position is the last id handled."""

    name = "memory"

    def __init__(self, rows: list[dict[str, str]]) -> None:
        self.rows = rows
        self.started_at: list[str | None] = []
        self.acked: list[str] = []

    def batches(
        self, start: str | None = None, batch_size: int = 256, max_records: int | None = None
    ) -> Iterator[StreamBatch]:
        self.started_at.append(start)
        i = 0 if start is None else int(start.split("-")[1])
        stop = len(self.rows) if max_records is None else min(len(self.rows), i + max_records)
        while i < stop:
            j = min(i + batch_size, stop)
            items = [
                Item(id=r["id"], input=r["text"], fields={"label": r["label"]})
                for r in self.rows[i:j]
            ]
            yield StreamBatch(items, [None] * len(items), [], f"0-{j}", j - i)
            i = j

    def records_hint(self) -> int | None:
        return len(self.rows)

    def acknowledge(self, position: str) -> None:
        self.acked.append(position)

    def close(self) -> None:
        pass


@dataclass
class Durable:
    """What survives the process: the rows a sink made durable, in order."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    uptos: list[str] = field(default_factory=list)


class MemorySink:
    """Keeps rows until sync; its position token is a dict (rows durable, input answered)."""

    def __init__(self, durable: Durable, opening: Opening, position: Any) -> None:
        self.durable = durable
        if opening != "resume" or position is None:
            durable.rows.clear()
        else:  # a stream cannot be cut: it skips what it already holds instead
            assert len(durable.rows) == position["rows"]
        self.pending: list[dict[str, Any]] = []
        self.upto: str | None = None

    def write(self, rows: Sequence[Mapping[str, Any]], upto: Any) -> None:
        self.pending.extend(dict(r) for r in rows)
        self.upto = upto

    def sync(self) -> dict[str, Any]:
        self.durable.rows.extend(self.pending)
        self.pending = []
        if self.upto is not None:
            self.durable.uptos.append(self.upto)
        return {"rows": len(self.durable.rows), "upto": self.upto}

    def close(self) -> None:
        pass


def _rows(n: int) -> list[dict[str, str]]:
    rng = random.Random(3)
    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "poor"]}
    out = []
    for i in range(n):
        lab = rng.choice(sorted(words))
        text = " ".join(rng.choice([*words[lab], "the", "film", "plot"]) for _ in range(6))
        out.append({"id": f"e{i}", "text": text, "label": lab})
    return out


def _plan(tmp_path: Path, limit: int | None) -> RunPlan:
    cfg = quick_config(
        text_field="text",
        id_field="id",
        label_field=None,
        expert_field="label",
        expert_cost=0.001,
        target_agreement=None,
        embeddings=False,
        format=None,
        seed=0,
    )
    cfg.batch_size = 40
    cfg.checkpoint.every_items = 100
    return RunPlan(
        config=cfg,
        input="redis://example/in",
        output=tmp_path / "unused-out",
        store=tmp_path / "state.sqlite",
        rejects=tmp_path / "unused-rejects",
        limit=limit,
        progress=False,
    )


def test_a_run_resumes_from_opaque_position_tokens(tmp_path: Path) -> None:
    rows = _rows(300)
    out, rejects = Durable(), Durable()

    def endpoints(stream: MemoryStream) -> Endpoints:
        return Endpoints(
            source=stream,
            sinks={
                "output": lambda opening, pos: MemorySink(out, opening, pos),
                "rejects": lambda opening, pos: MemorySink(rejects, opening, pos),
            },
            input_id="redis://example/in",
            output_id="redis://example/out",
        )

    first = MemoryStream(rows)
    summary = StreamRun(_plan(tmp_path, limit=130), endpoints=endpoints(first)).run()
    assert summary.records == 130 and not summary.stopped_early
    assert first.started_at == [None]
    assert first.acked[-1] == "0-130"  # acknowledged after its checkpoint committed
    with RunStore(tmp_path / "state.sqlite") as store:
        cp = store.latest(with_learner=False)
    assert cp is not None
    assert cp.positions == {
        "source": "0-130",
        "output": {"rows": 130, "upto": "0-130"},
        "rejects": {"rows": 0, "upto": None},
    }
    assert RunCounters.from_json(cp.counters).items == 130

    second = MemoryStream(rows)
    summary = StreamRun(_plan(tmp_path, limit=None), endpoints=endpoints(second)).run()
    assert second.started_at == ["0-130"]  # handed back the token it gave
    assert summary.records == summary.items == 300
    assert summary.resumed_at == 130
    assert [r["id"] for r in out.rows] == [r["id"] for r in rows]  # each id once, in order
    assert out.uptos[-1] == "0-300"
    assert json.loads(json.dumps(out.rows[0]))["stage"] in ("hashed_ngram", "expert")


def test_file_endpoints_implement_the_protocols(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    source = open_source(src)
    assert isinstance(source, Source)
    assert source.records_hint() == 2
    (batch,) = source.batches(start=1)
    assert batch.end == 2 and [it.text for it in batch.items] == ["b"]
    for sink in (DecisionWriter(tmp_path / "o.csv"), JsonlWriter(tmp_path / "r.jsonl")):
        try:
            assert isinstance(sink, Sink)
            assert isinstance(sink.sync(), int)
        finally:
            sink.close()


def test_saved_counters_are_typed_and_unreadable_ones_are_a_store_error() -> None:
    from tiered.errors import StoreError

    c = RunCounters.from_json({"items": "7", "stage_counts": {"expert": 2}, "future_key": 1})
    assert (c.items, c.stage_counts, c.records) == (7, {"expert": 2}, 0)
    assert RunCounters.from_json(c.to_json()) == c
    with pytest.raises(StoreError, match="--fresh"):
        RunCounters.from_json({"items": "many"})
