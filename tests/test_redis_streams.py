"""`tiered run` workers on a Redis stream: exactly once across workers that die and restart."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tiered.io.redis_streams import decode_output_entry

pytestmark = pytest.mark.slow

TIERED = shutil.which("tiered", path=str(Path(sys.executable).parent)) or "tiered"
WORDS = {
    "pos": ["good", "great", "fine", "lovely", "fun", "superb"],
    "neg": ["bad", "awful", "poor", "dull", "sad", "weak"],
}


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def fill(r: redis.Redis, n: int, *, seed: int = 0) -> None:
    rng = random.Random(seed)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        label = rng.choice(["pos", "neg"])
        words = " ".join(rng.choice(WORDS[label]) for _ in range(4))
        pipe.xadd("in", {"id": f"r{i}", "text": f"{words} item{rng.randrange(40)}", "label": label})
    pipe.execute()


def worker(redis_url: str, name: str, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    """A `tiered run` worker process (quick mode, label-column expert)."""
    args = [
        TIERED,
        "run",
        f"{redis_url}/in?group=g&consumer={name}&claim_idle=4&block=0.2",
        "-o",
        f"{redis_url}/out",
        "--id-field",
        "id",
        "--expert-field",
        "label",
        "--expert-cost",
        "0.001",
        "--batch-size",
        "50",
        "--exit-when-idle",
        "1.5",
        "--checkpoint-every",
        "50",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def pending_of(r: redis.Redis, name: str) -> list[str]:
    rows = r.xpending_range("in", "g", "-", "+", 10_000, consumername=name)
    return [row["message_id"] for row in rows]


def kill_holding_entries(r: redis.Redis, proc: subprocess.Popen[str], name: str) -> list[str]:
    """SIGKILL ``proc`` at a moment it holds unanswered entries; return their ids."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        os.kill(proc.pid, signal.SIGSTOP)  # frozen: its pending entries cannot change
        held = pending_of(r, name)
        if held:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return held
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"worker {name} never held an entry")


def wait_checkpointed(store: Path) -> None:
    """Until the worker with this local store has committed a checkpoint."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(store)) as db:
            if db.execute("SELECT count(*) FROM run_history").fetchone()[0] > 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint in {store}")


def wait_for_output(r: redis.Redis, n: int, procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 40
    while r.exists("out") == 0 or r.xlen("out") < n:
        assert time.monotonic() < deadline, "the workers did not get going"
        assert all(p.poll() is None for p in procs), "a worker ended early"
        time.sleep(0.02)


def test_three_workers_one_killed_one_restarted_answer_every_id_once(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    n = 5000
    fill(r, n)
    throttle = ("--throttle", "0.06")  # batches take a while: the kills land mid-stream
    procs = {w: worker(redis_url, w, tmp_path, *throttle) for w in ("w1", "w2", "w3")}
    started = list(procs.values())
    outputs: dict[str, str] = {}
    try:
        wait_for_output(r, 500, started)
        held_by_dead = kill_holding_entries(r, procs["w1"], "w1")
        wait_checkpointed(tmp_path / "out.w2.tiered.sqlite")
        held_by_w2 = kill_holding_entries(r, procs["w2"], "w2")
        assert r.xlen("out") < n, "the stream was answered before the kills"
        procs["w2"] = worker(redis_url, "w2", tmp_path, *throttle)  # the same worker again
        started.append(procs["w2"])
        for name in ("w2", "w3"):
            outputs[name], _ = procs[name].communicate(timeout=60)
            assert procs[name].returncode == 0, outputs[name]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
            assert p.stdout is not None
            p.stdout.close()
    ids = Counter(decode_output_entry(f)["id"] for _, f in r.xrange("out"))
    assert set(ids) == {f"r{i}" for i in range(n)}, "an input id is missing"
    assert max(ids.values()) == 1, "an input id was answered twice"
    assert r.xpending("in", "g")["pending"] == 0
    # the dead worker's entries were taken over by the others and answered
    assert held_by_dead and not pending_of(r, "w1")
    assert held_by_w2 and not r.exists("in:dead")
    # the fleet's shared counters count each answered id once
    counts = r.hgetall("out:fleet")
    assert sum(int(v) for k, v in counts.items() if k.startswith("stage:")) == n
    # the restarted worker went on from its own checkpoint
    assert "this session" in outputs["w2"] and "this session" not in outputs["w3"]


def test_stream_worker_from_a_config_file(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    fill(r, 300, seed=1)
    r.xadd("in", {"id": "broken", "txt": "no text field"})
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "input: {id_field: id}\n"
        "cheap: [{kind: hashed_ngram}]\n"
        "expert: {model: {kind: label_column, field: label}, usd_per_call: 0.001}\n"
        f"source: {redis_url}/in?group=cfg&consumer=c1\n"
        f"output: {redis_url}/answers\n"
        "exit_when_idle: 0.5\n"
    )
    done = subprocess.run(
        [TIERED, "run", str(cfg), "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [decode_output_entry(f) for _, f in r.xrange("answers")]
    assert sorted(row["id"] for row in rows) == sorted(f"r{i}" for i in range(300))
    assert {row["stage"] for row in rows} <= {"hashed_ngram", "expert"}
    [(_, dead)] = r.xrange("in:dead")
    assert dead["field"] == "text" and "is missing" in dead["reason"]
    assert "1 rejected" in done.stdout and "in:dead" in done.stdout
    assert (tmp_path / "answers.c1.tiered.sqlite").exists()


def test_a_stream_input_needs_a_stream_output(redis_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [TIERED, "run", f"{redis_url}/in", "-o", str(tmp_path / "o.jsonl"), "--expert-field",
         "label", "--expert-cost", "0.001"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "needs a Redis stream OUTPUT" in done.stdout + done.stderr


def test_the_example_worker_config_and_compose_file_fit_together() -> None:
    import yaml

    from tiered.config.run import load_run_config
    from tiered.io.redis_url import parse_stream_url

    examples = Path(__file__).resolve().parents[1] / "examples"
    cfg = load_run_config(examples / "stream-worker.yaml")
    assert cfg.source is not None and cfg.output is not None
    assert parse_stream_url(cfg.source, role="input").params["group"] == "tiered"
    assert parse_stream_url(cfg.output, role="output").stream == "labels"
    compose = yaml.safe_load((examples / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["command"][:2] == ["run", "/config/stream-worker.yaml"]
    mounted = worker["volumes"][0].split(":")[0]
    assert (examples / mounted).resolve() == (examples / "stream-worker.yaml").resolve()
    assert (examples / "Dockerfile").exists()


def test_an_idle_stream_records_and_commits_nothing_new(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    from tiered.runner import QuickOptions, StreamRun, make_plan
    from tiered.store.runs import RunStore

    fill(r, 120, seed=2)
    quick = QuickOptions(id_field="id", expert_field="label", expert_cost=0.001)
    plan = make_plan(
        [f"{redis_url}/in?group=g&consumer=a&block=0.02"],
        f"{redis_url}/out",
        quick=quick,
        batch_size=50,
        checkpoint_seconds=0.01,
        store=tmp_path / "a.sqlite",
        progress=False,
        exit_when_idle=0.5,  # about 25 idle moments before it ends
    )
    summary = StreamRun(plan).run()
    assert summary.items == 120 and summary.records == 120
    assert r.xlen("out") == 120
    store = RunStore(tmp_path / "a.sqlite")
    try:
        assert [row["records"] for row in store.history()] == [50, 100, 120]
    finally:
        store.close()


def test_a_file_input_to_a_stream_output_answers_each_id_once(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    from tiered.runner import QuickOptions, StreamRun, make_plan

    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"f{i}", "text": f"good film {i}", "label": "pos"}) + "\n"
                for i in range(80))
    )  # fmt: skip
    quick = QuickOptions(id_field="id", expert_field="label", expert_cost=0.001)

    def run(fresh: bool) -> int:
        plan = make_plan([str(src)], f"{redis_url}/out", quick=quick, fresh=fresh, progress=False)
        assert plan.store == Path("out.tiered.sqlite")  # in the working folder
        return StreamRun(plan).run().session_items

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert run(fresh=False) == 80
        assert run(fresh=True) == 80  # answered again from the start ...
    assert r.xlen("out") == 80  # ... but each id is in the output once
    assert r.scard("out:done") == 80
