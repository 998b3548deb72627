"""`tiered run` guards its outputs: one run per output file, no silent truncation, a clean
stop on SIGTERM, clean errors for impossible paths and for stores of an older schema."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_run_cli import read_jsonl, tiered
from tests.test_run_resume import TIERED, committed, run_args, write_input
from tiered.store import RunStore


@dataclass
class SlowRun:
    """A throttled `tiered run` subprocess, past its first checkpoint."""

    src: Path
    ids: list[str]
    out: Path
    store: Path
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def slow_run(tmp_path: Path) -> Iterator[SlowRun]:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 2000)
    out = tmp_path / "out.jsonl"
    store = Path(f"{out}.tiered.sqlite")
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*TIERED, "run", *run_args(src, out, "--throttle", "0.5")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 120
        while committed(store)[0] < 300:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        yield SlowRun(src, ids, out, store, log, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


@pytest.mark.slow
def test_sigterm_stops_after_a_clean_checkpoint_with_exit_143(slow_run: SlowRun) -> None:
    r = slow_run
    r.proc.send_signal(signal.SIGTERM)
    r.proc.wait(timeout=120)
    assert r.proc.returncode == 128 + signal.SIGTERM, r.log.read_text()
    assert "stopped early" in r.log.read_text()
    # clean: the last checkpoint covers everything written (nothing to cut on resume)
    offset, out_bytes = committed(r.store)
    assert out_bytes == r.out.stat().st_size
    assert 0 < offset < len(r.src.read_text(encoding="utf-8").splitlines())
    done = subprocess.run(
        [*TIERED, "run", *run_args(r.src, r.out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert [x["id"] for x in read_jsonl(r.out)] == r.ids


@pytest.mark.slow
def test_a_second_run_on_the_same_output_with_another_store_is_refused(
    slow_run: SlowRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = slow_run
    other = run_args(r.src, r.out, "--store", str(tmp_path / "other.sqlite"))
    code, _, err = tiered(capsys, "run", *other)
    assert code == 2
    assert f"another tiered run is writing {r.out}" in err
    assert len(err.strip().splitlines()) == 1
    assert r.proc.poll() is None, "the first run must go on"
    r.proc.send_signal(signal.SIGTERM)
    r.proc.wait(timeout=120)
    # the first run's output is whole: resuming it answers every record exactly once
    assert tiered(capsys, "run", *run_args(r.src, r.out))[0] == 0
    assert [x["id"] for x in read_jsonl(r.out)] == r.ids


def test_writing_a_locked_output_is_refused(tmp_path: Path) -> None:
    from tiered.errors import StoreError
    from tiered.io.sinks import DecisionWriter, JsonlWriter

    out = tmp_path / "out.jsonl"
    first = DecisionWriter(out)
    try:
        with pytest.raises(StoreError, match="another tiered run is writing"):
            DecisionWriter(out)
        first.write([{"id": "a"}])
        first.sync()
    finally:
        first.close()
    JsonlWriter(out, committed=out.stat().st_size).close()  # free again once closed


@pytest.mark.parametrize("store_state", ["missing", "empty"])
def test_an_output_without_its_store_is_not_truncated_unless_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store_state: str
) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 300)
    out = tmp_path / "out.jsonl"
    store = Path(f"{out}.tiered.sqlite")
    assert tiered(capsys, "run", *run_args(src, out))[0] == 0
    before = out.read_bytes()
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    if store_state == "missing":
        store.unlink()
    else:
        store.write_bytes(b"")
    code, _, err = tiered(capsys, "run", *run_args(src, out))
    assert code == 2
    assert f"{out} already holds {len(before):,} bytes" in err and "--fresh" in err
    assert out.read_bytes() == before  # untouched
    code, _, err = tiered(capsys, "run", *run_args(src, out, "--fresh"))
    assert code == 0, err
    assert [x["id"] for x in read_jsonl(out)] == ids


def test_an_output_under_a_regular_file_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    write_input(src, 20)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    code, _, err = tiered(capsys, "run", *run_args(src, blocker / "out.jsonl"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "field '--output'" in err and str(blocker) in err
    assert blocker.read_text(encoding="utf-8") == "not a folder"


_SCHEMA_1 = """
CREATE TABLE run_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE run_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
    stream_offset INTEGER NOT NULL, output_bytes INTEGER NOT NULL,
    reject_bytes INTEGER NOT NULL, replay_bytes INTEGER NOT NULL,
    counters TEXT NOT NULL, learner BLOB, created_at REAL NOT NULL);
CREATE TABLE run_history (n INTEGER PRIMARY KEY, row TEXT NOT NULL);
"""


def _old_store(path: Path, src: Path, out: Path) -> None:
    """A store as the first schema wrote it (integer offset and byte-length columns)."""
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_1)
    meta = {
        "schema_version": "1",
        "config_hash": "0" * 64,
        "input": str(src.resolve()),
        "output": str(out.resolve()),
        "config": "{}",
    }
    conn.executemany("INSERT INTO run_meta VALUES (?, ?)", meta.items())
    conn.execute("INSERT INTO run_checkpoint VALUES (1, 3, 100, 2000, 0, 0, '{}', NULL, 0)")
    conn.commit()
    conn.close()


def test_a_store_of_an_older_schema_is_refused_unless_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiered.errors import StoreError

    src = tmp_path / "in.jsonl"
    ids = write_input(src, 200)
    out = tmp_path / "out.jsonl"
    store = Path(f"{out}.tiered.sqlite")
    _old_store(store, src, out)
    with RunStore(store) as rs, pytest.raises(StoreError, match=r"schema 1, this one reads"):
        rs.latest()
    code, _, err = tiered(capsys, "run", *run_args(src, out))
    assert code == 2
    assert f"the state store {store} was written by another tiered version" in err
    assert "(schema 1, " in err and "--fresh" in err
    assert not out.exists()
    code, _, err = tiered(capsys, "run", *run_args(src, out, "--fresh"))
    assert code == 0, err
    assert [x["id"] for x in read_jsonl(out)] == ids
    with RunStore(store) as rs:
        cp = rs.latest(with_learner=False)
        assert cp is not None and cp.positions["output"] == out.stat().st_size
    assert json.loads(json.dumps(cp.positions)) == cp.positions
