"""`tiered run` survives SIGKILL: a re-run answers every record exactly once, learning kept.

The run is a real subprocess, killed with SIGKILL (no cleanup of any kind) while it is
streaming and after it wrote output beyond its last checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_run_cli import make_rows, read_jsonl, tiered
from tiered.store import RunStore

# The installed CLI in a fresh interpreter: `tiered run ...` as a user runs it.
TIERED = [
    sys.executable,
    "-c",
    "import sys; from tiered.cli import main; sys.argv[0] = 'tiered'; main()",
]
BAD_EVERY = 97


def write_input(path: Path, n: int) -> list[str]:
    """n good rows with a broken or text-less line after every BAD_EVERY-th; their ids."""
    rows = make_rows(n)
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r) + "\n")
            if i % BAD_EVERY == BAD_EVERY - 1:
                f.write("{broken\n" if i % 2 else json.dumps({"id": f"bad{i}", "text": ""}) + "\n")
    return [r["id"] for r in rows]


def run_args(src: Path, out: Path, *extra: str) -> list[str]:
    """The arguments of `tiered run` in quick mode, small batches and checkpoints."""
    return [
        str(src), "-o", str(out),
        "--text-field", "text", "--id-field", "id", "--expert-field", "label",
        "--expert-cost", "0.002", "--target-agreement", "0.96", "--no-progress",
        "--batch-size", "50", "--checkpoint-every", "300", *extra,
    ]  # fmt: skip


def command(src: Path, out: Path, *extra: str) -> list[str]:
    return [*TIERED, "run", *run_args(src, out, *extra)]


def committed(store_path: Path) -> tuple[int, int]:
    """(stream offset, output bytes) of the last checkpoint; (0, 0) before the first."""
    if not store_path.exists():
        return 0, 0
    with RunStore(store_path) as store:
        cp = store.latest(with_learner=False)
    return (0, 0) if cp is None else (cp.positions["source"], cp.positions["output"])


def kill_mid_stream(
    proc: subprocess.Popen[bytes], log: Path, out: Path, store_path: Path, min_offset: int
) -> None:
    """SIGKILL ``proc`` once it committed ``min_offset`` records and wrote more since."""
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run made no progress"
            offset, out_bytes = committed(store_path)
            if offset >= min_offset and out.exists() and out.stat().st_size > out_bytes + 100:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_mid_stream_then_rerun_answers_every_record_exactly_once(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_input(src, 4000)
    n_records = len(src.read_text(encoding="utf-8").splitlines())
    out = tmp_path / "out.jsonl"
    store_path = Path(f"{out}.tiered.sqlite")
    rejects_path = Path(f"{out}.rejects.jsonl")

    # 1. start slowly (a throttled stream), wait until it is well into the stream with
    #    uncommitted output on disk, then SIGKILL it
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command(src, out, "--throttle", "0.02"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    kill_mid_stream(proc, log, out, store_path, 1200)
    offset, out_bytes = committed(store_path)
    assert 0 < offset < n_records, "killed after the end: nothing to resume"
    assert out.stat().st_size > out_bytes  # uncommitted lines on disk the re-run must drop
    with RunStore(store_path) as store:
        cp = store.latest()
        assert cp is not None
        learned_at_kill = cp.learner["counters"]["n_items"]
        assert learned_at_kill == cp.counters["items"] > 0

    # 2. the same command, stopped just past the checkpoint (--limit counts records):
    #    the uncommitted tail the killed run left must be cut, not kept or overwritten
    part = subprocess.run(
        command(src, out, "--limit", str(offset + 20)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert part.returncode == 0, part.stderr
    n_good = sum(1 for line in src.read_text().splitlines()[: offset + 20] if '"label"' in line)
    assert [x["id"] for x in read_jsonl(out)] == ids[:n_good]

    # 3. the same command again (without the throttle): resumes and finishes
    done = subprocess.run(
        command(src, out), capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr

    lines = read_jsonl(out)
    got = [x["id"] for x in lines]
    assert len(got) == len(set(got)), "an item was answered twice"
    assert got == ids, "items missing or out of order"

    # rejects: each bad line exactly once, too
    rejects = read_jsonl(rejects_path)
    expected_bad = sum(1 for i in range(4000) if i % BAD_EVERY == BAD_EVERY - 1)
    assert len(rejects) == expected_bad
    assert len({r["offset"] for r in rejects}) == expected_bad

    # learned state was restored, not rebuilt: the counters continued from the checkpoint,
    # and the items right after the resume point were not another warm-up (all expert)
    with RunStore(store_path) as store:
        final = store.latest()
        assert final is not None
        assert final.learner["counters"]["n_items"] == 4000
        assert final.counters["sessions"] == 3
        assert final.positions["source"] == n_records
    first_after = lines[learned_at_kill : learned_at_kill + 200]
    share = sum(x["stage"] == "expert" for x in first_after) / len(first_after)
    assert share < 0.5, f"expert answered {share:.0%} right after the resume: warm-up again?"
    assert "4,000 answered" in done.stdout


def test_store_refuses_an_output_file_shorter_than_committed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the output was replaced behind the store's back, resuming would lose lines."""
    src = tmp_path / "in.jsonl"
    write_input(src, 300)
    out = tmp_path / "out.jsonl"
    assert tiered(capsys, "run", *run_args(src, out))[0] == 0
    out.write_text("", encoding="utf-8")
    code, _, err = tiered(capsys, "run", *run_args(src, out))
    assert code == 2
    assert "--fresh" in err and "committed" in err
    code, _, err = tiered(capsys, "run", *run_args(src, out, "--fresh"))
    assert code == 0, err
    assert len(read_jsonl(out)) == 300


def test_reject_file_has_offset_line_field_reason_and_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    good = make_rows(250)
    lines = [json.dumps(r) for r in good]
    lines.insert(10, '{"id": "x1", "text": ""}')
    lines.insert(20, '{"id": "x2"}')
    lines.insert(30, "not json at all")
    lines.insert(40, '{"id": "x3", "text": 7, "label": "pos"}')
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, stdout, err = tiered(capsys, "run", *run_args(src, out))
    assert code == 0, err
    assert [x["id"] for x in read_jsonl(out)] == [r["id"] for r in good]  # the run went on
    rejects = read_jsonl(Path(f"{out}.rejects.jsonl"))
    assert [(r["offset"], r["line"], r["field"]) for r in rejects] == [
        (10, 11, "text"),
        (20, 21, "text"),
        (30, 31, None),
        (40, 41, "text"),
    ]
    assert rejects[0]["reason"] == f"{src}:11, field 'text': is empty (the text field)"
    assert "is missing" in rejects[1]["reason"]
    assert "not valid JSON" in rejects[2]["reason"]
    assert "must be a string" in rejects[3]["reason"] and "Got 7" in rejects[3]["reason"]
    assert rejects[2]["raw"] == "not json at all"
    assert "4 rejected" in stdout


def test_checkpoint_round_trip_identity_and_lock(tmp_path: Path) -> None:
    from tiered.errors import StoreError
    from tiered.store import Checkpoint, RunIdentity

    path = tmp_path / "state.sqlite"
    ident = RunIdentity("abc", "/in.jsonl", "/out.jsonl")
    with RunStore(path) as store:
        store.lock()
        assert store.start(ident) is None
        cp = Checkpoint({"source": 10, "output": 99}, {"items": 9}, learner={"w": [1, 2]})
        store.commit(cp, [{"n": 5, "x": 1.0}, {"n": 9, "x": 2.0}])
        positions = {"source": "1700000000000-3", "output": 199}  # any JSON token
        store.commit(Checkpoint(positions, learner={"w": [3]}, seq=cp.seq))
        with (
            pytest.raises(StoreError, match="another tiered run is using"),
            RunStore(path) as other,
        ):
            other.lock()
    with RunStore(path) as store:
        saved = store.start(ident)
        assert saved is not None
        assert (saved.positions, saved.seq, saved.learner) == (positions, 2, {"w": [3]})
        assert [r["n"] for r in store.history()] == [5, 9]
        with pytest.raises(StoreError, match=r"holds a different run \(input /in.jsonl \(saved\)"):
            store.start(RunIdentity("abc", "/other.jsonl", "/out.jsonl"))
        assert store.start(RunIdentity("abc", "/other.jsonl", "/out.jsonl"), fresh=True) is None
        assert store.latest() is None and store.history() == []
