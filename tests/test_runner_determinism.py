"""A decision never depends on where a run was stopped: resuming at a checkpoint (after a
clean stop or a SIGKILL) gives the same output, byte for byte, as a run that was never
stopped (same seed)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.test_run_cli import QUICK, tiered
from tests.test_run_resume import TIERED, kill_mid_stream


def _noisy_input(path: Path, n: int) -> None:
    """Two classes with 15% of the expert's labels flipped: the learner never settles."""
    rng = random.Random(0)
    words = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "sad"]}
    filler = ["the", "a", "movie", "plot", "actor", "scene", "story", "film"]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            lab = rng.choice(sorted(words))
            text = " ".join(rng.choice(filler + words[lab]) for _ in range(8))
            label = rng.choice(sorted(words)) if rng.random() < 0.15 else lab
            f.write(json.dumps({"id": f"r{i}", "text": text, "label": label}) + "\n")


def _assert_same_decisions(whole: Path, resumed: Path, n: int) -> None:
    a = whole.read_text(encoding="utf-8").splitlines()
    b = resumed.read_text(encoding="utf-8").splitlines()
    assert len(a) == len(b) == n
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
    assert first is None, f"decisions differ from item {first} on: {a[first]} vs {b[first]}"


def test_resume_at_a_checkpoint_reproduces_an_unstopped_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    _noisy_input(src, 3000)
    args = [str(src), *QUICK, "--batch-size", "50", "--checkpoint-every", "300"]
    whole, parts = tmp_path / "whole.jsonl", tmp_path / "parts.jsonl"
    assert tiered(capsys, "run", *args, "-o", str(whole))[0] == 0
    # stopped at a batch boundary (where a checkpoint, and so a SIGKILL resume, lands)
    assert tiered(capsys, "run", *args, "-o", str(parts), "--limit", "1200")[0] == 0
    assert tiered(capsys, "run", *args, "-o", str(parts))[0] == 0
    _assert_same_decisions(whole, parts, 3000)


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_an_unkilled_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    _noisy_input(src, 3000)
    args = [str(src), *QUICK, "--batch-size", "50", "--checkpoint-every", "300"]
    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    assert tiered(capsys, "run", *args, "-o", str(whole))[0] == 0
    store = Path(f"{killed}.tiered.sqlite")
    log = tmp_path / "killed.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*TIERED, "run", *args, "-o", str(killed), "--throttle", "0.05"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    kill_mid_stream(proc, log, killed, store, 700)  # well into the stream, tail uncommitted
    assert tiered(capsys, "run", *args, "-o", str(killed))[0] == 0
    _assert_same_decisions(whole, killed, 3000)
