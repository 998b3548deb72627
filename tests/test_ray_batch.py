"""`tiered batch`: learn on a sample, freeze, answer the rest; Parquet parts, exactly once.

Most tests run the steps in this process (``--in-process``); the last ones start a real
local Ray in a subprocess: one is killed mid-run (SIGKILL) and run again.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tiered.config.run import RunConfig
from tiered.core.items import Item
from tiered.errors import ConfigError, StoreError
from tiered.online import OnlineCascade
from tiered.runner.build import build_cascade
from tiered.runner.plan import RunPlan
from tiered.runner.ray_batch import BatchRun
from tiered.runner.ray_plan import BatchPlan, make_batch_plan
from tiered.runner.ray_stages import frozen_threshold

from ._cli import tiered

WORDS = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "grim"]}
FILLER = ["the", "a", "movie", "plot", "actor", "scene"]
CONFIG = """input: {id_field: id, label_field: gold}
cheap: [{kind: hashed_ngram}]
expert: {model: {kind: label_column, field: label}, usd_per_call: 0.002}
online: {target_agreement: 0.9, warmup: 50, audit_rate: 0.2}
"""


def make_rows(n: int, seed: int = 0, start: int = 0) -> list[dict[str, str]]:
    """Two classes told apart by their words; the expert's `label` is wrong 5% of the time."""
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        gold = rng.choice(sorted(WORDS))
        text = " ".join(rng.choice(FILLER + WORDS[gold]) for _ in range(6))
        label = gold if rng.random() > 0.05 else ("neg" if gold == "pos" else "pos")
        rows.append({"id": f"r{i}", "text": text, "label": label, "gold": gold})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]], bad: tuple[int, ...] = ()) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            if i in bad:
                f.write("{broken\n")
            f.write(json.dumps(r) + "\n")
    return path


def setup(tmp_path: Path, n: int = 1200, bad: tuple[int, ...] = (10, 700)) -> tuple[Path, Path]:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    return cfg, write_jsonl(tmp_path / "in.jsonl", make_rows(n), bad)


def plan(cfg: Path, inp: Path, out: Path, **kw: object) -> BatchPlan:
    opts: dict[str, object] = {"partition_records": 100, "learn_records": 200, "in_process": True}
    return make_batch_plan(cfg, inp, out, **(opts | kw))  # type: ignore[arg-type]


def parts(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def rejects(out: Path) -> list[dict]:
    files = sorted((out / "rejects").glob("*.jsonl"))
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


# -- in this process ---------------------------------------------------------------------------


def test_every_record_answered_once_in_input_order(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path)
    out = tmp_path / "out"
    result = BatchRun(plan(cfg, inp, out)).run()
    table = parts(out)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(1200)]
    assert table.schema.names == [
        "id", "label", "stage", "confidence", "cost", "audited", "expert_label", "cheap_label",
    ]  # fmt: skip
    bad = rejects(out)
    assert [r["line"] for r in bad] == [11, 702] and all("in.jsonl" in r["reason"] for r in bad)
    s = result.summary
    assert (s.records, s.items, s.rejects) == (1202, 1200, 2)
    assert result.partitions == 13 and result.written == 13 and result.done_before == 0
    assert result.learned_records == 200  # two partitions of 100 records
    # the cheap stage answers most items once it has learned
    assert s.stage_share["hashed_ngram"] > 0.3
    stages = Counter(table.column("stage").to_pylist())
    assert stages["hashed_ngram"] + stages["expert"] == 1200


def test_audits_add_up_across_partitions_into_one_estimate(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path)
    out = tmp_path / "out"
    s = BatchRun(plan(cfg, inp, out)).run().summary
    rows = parts(out).to_pylist()
    audited = [r for r in rows if r["audited"] and r["expert_label"] is not None]
    # an audited answer outputs the expert's label and keeps the cheap one it checked
    assert audited and all(r["label"] == r["expert_label"] for r in audited)
    assert all(r["stage"] == "expert" and r["cheap_label"] is not None for r in audited)
    agree = sum(r["cheap_label"] == r["expert_label"] for r in audited)
    assert s.audits == len(audited) and 0 < agree < len(audited)
    cheap = sum(r["stage"] == "hashed_ngram" for r in rows)
    expected = (1200 - cheap + cheap * agree / len(audited)) / 1200
    assert s.agreement == pytest.approx(expected)
    assert s.ci_low is not None and s.ci_high is not None
    assert s.ci_low < s.agreement < s.ci_high
    assert s.true_agreement == pytest.approx(
        sum(r["label"] == src["label"] for r, src in zip(rows, make_rows(1200), strict=True)) / 1200
    )
    # every expert call is paid: audits and deferrals, here and in the sample
    assert s.expert_calls >= sum(r["expert_label"] is not None for r in rows)
    assert s.usd_spent == pytest.approx(sum(r["cost"] for r in rows))


def test_rerun_answers_only_the_missing_partitions(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path)
    out = tmp_path / "out"
    BatchRun(plan(cfg, inp, out)).run()
    first = parts(out)
    # a killed run: two partitions never written, a temporary file and a reject file left
    (out / "part-000004.parquet").unlink()
    (out / "part-000007.parquet").unlink()  # 99 items and a reject
    (out / ".part-000004.parquet.tmp").write_bytes(b"half")
    (out / "rejects" / "part-000007.jsonl").rename(out / "rejects" / "part-000007.jsonl.keep")
    (out / "rejects" / "part-000007.jsonl").write_text('{"stale": 1}\n')
    result = BatchRun(plan(cfg, inp, out)).run()
    assert (result.written, result.done_before, result.learn_s) == (2, 11, 0.0)
    assert result.apply_items == 199
    assert parts(out).equals(first)
    assert not list(out.glob(".*.tmp"))
    assert (out / "rejects" / "part-000007.jsonl").read_text() == (
        out / "rejects" / "part-000007.jsonl.keep"
    ).read_text()
    assert result.summary.resumed_at == 1202 - 200
    assert result.summary.records == 1202


def test_a_missing_sample_partition_learns_again(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path)
    out = tmp_path / "out"
    first = BatchRun(plan(cfg, inp, out)).run()
    table = parts(out)
    sample = json.loads((out / "_batch.json").read_text())["sample"]
    (out / f"part-{sample[0]:06d}.parquet").unlink()
    again = BatchRun(plan(cfg, inp, out)).run()
    assert again.learn_s > 0 and again.written == len(sample)
    assert parts(out).equals(table)  # the same seed learns the same cascade
    assert again.summary.agreement == first.summary.agreement


def test_a_repeated_id_is_rejected_once_wherever_it_comes(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    data = tmp_path / "data"
    data.mkdir()
    rows = make_rows(300)
    # r5 again in its own partition, r7 in a later one, r9 and r11 in later files
    write_jsonl(data / "a.jsonl", [*rows[:50], rows[5], *rows[50:250], rows[7]])
    write_jsonl(data / "b.jsonl", [rows[9], *rows[250:]])
    with (data / "c.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([make_rows(1, start=300)[0], rows[11]])
    out = tmp_path / "out"
    result = BatchRun(plan(cfg, data, out)).run()
    ids = parts(out).column("id").to_pylist()
    assert Counter(ids) == Counter(f"r{i}" for i in range(301))
    bad = rejects(out)
    lines = [(r["line"], r["field"]) for r in bad]
    assert lines == [(51, "id"), (252, "id"), (1, "id"), (None, "id")]
    assert "duplicate id 'r5'" in bad[0]["reason"] and "a.jsonl:51" in bad[0]["reason"]
    assert "b.jsonl:1" in bad[2]["reason"] and json.loads(bad[2]["raw"])["id"] == "r9"
    assert "c.csv" in bad[3]["reason"] and "'r11'" in bad[3]["reason"]
    assert (result.summary.items, result.summary.rejects) == (301, 4)
    # a re-run knows them too: the duplicates are in the manifest
    (out / "part-000002.parquet").unlink()
    again = BatchRun(plan(cfg, data, out)).run()
    assert again.written == 1 and again.summary.rejects == 4
    assert Counter(parts(out).column("id").to_pylist()) == Counter(ids)


def test_refuses_another_config_or_input_unless_fresh(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path, n=300)
    out = tmp_path / "out"
    BatchRun(plan(cfg, inp, out)).run()
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("audit_rate: 0.2", "audit_rate: 0.3"))
    with pytest.raises(ConfigError, match="another config"):
        BatchRun(plan(other, inp, out)).run()
    with pytest.raises(ConfigError, match="--partition-records"):
        BatchRun(plan(cfg, inp, out, partition_records=50)).run()
    write_jsonl(inp, make_rows(301))
    with pytest.raises(ConfigError, match="another input"):
        BatchRun(plan(cfg, inp, out)).run()
    result = BatchRun(plan(cfg, inp, out, fresh=True)).run()
    assert result.summary.items == 301 and parts(out).num_rows == 301
    assert not list((out / "rejects").iterdir())  # the old run's rejects went with it


def test_a_second_run_on_the_same_outdir_is_refused(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path, n=300)
    out = tmp_path / "out"
    from tiered.runner.ray_plan import OutDir

    held = OutDir(out)
    held.lock()
    try:
        with pytest.raises(StoreError, match="another tiered batch run"):
            BatchRun(plan(cfg, inp, out)).run()
    finally:
        held.close()
    assert BatchRun(plan(cfg, inp, out)).run().summary.items == 300


def test_a_folder_of_files_gets_unique_ids_and_skips_outdir(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.replace("id_field: id, ", ""))
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "a.jsonl", make_rows(150))
    rows = make_rows(120, seed=1, start=150)
    with (data / "sub" / "b.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(make_rows(90, seed=2, start=270)), data / "c.parquet")
    (data / "notes.txt").write_text("not data")
    out = data / "out"  # inside INPUT: its part files are never read as input
    result = BatchRun(plan(cfg, data, out)).run()
    ids = parts(out).column("id").to_pylist()
    assert ids[:2] == ["a.jsonl:1", "a.jsonl:2"] and "sub/b.csv:1" in ids and "c.parquet:90" in ids
    assert len(ids) == len(set(ids)) == 360
    again = BatchRun(plan(cfg, data, out)).run()
    assert again.written == 0 and again.summary.items == 360 and result.summary.items == 360


def test_cli_prints_the_summary_and_names_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per row of the summary table
    cfg, inp = setup(tmp_path, n=400)
    out = tmp_path / "out"
    args = ["batch", str(cfg), str(inp), "-o", str(out), "--in-process", "--learn", "100"]
    code, stdout, _ = tiered(capsys, *args, "--partition-records", "100")
    assert code == 0, stdout
    assert "400 answered of 401 records" in stdout and "agreement (audited)" in stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("kind: hashed_ngram", "kind: nope"))
    code, _, err = tiered(capsys, "batch", str(bad), str(inp), "-o", str(tmp_path / "o2"))
    assert code == 2 and "bad.yaml" in err and "nope" in err
    code, _, err = tiered(capsys, "batch", str(cfg), str(tmp_path / "missing"), "-o", str(out))
    assert code == 2 and "not found" in err
    code, _, err = tiered(capsys, "batch", str(cfg), str(inp), "-o", str(out), "--in-process",
                          "--ray-only")  # fmt: skip
    assert code == 2 and "--ray-only or --in-process" in err


def _learned_cascade(tmp_path: Path, online: dict[str, object], n: int = 1000) -> OnlineCascade:
    data = yaml.safe_load(CONFIG)
    data["online"] = {"warmup": 50, "audit_rate": 0.2, **online}
    cfg = RunConfig.model_validate(data)
    rc = build_cascade(
        RunPlan(config=cfg, input="-", output=tmp_path, store=tmp_path / "s", rejects=tmp_path)
    )
    rows = make_rows(n)
    rc.cascade.process(
        [Item(id=r["id"], input=r["text"], fields={"label": r["label"]}) for r in rows]
    )
    return rc.cascade


def test_the_frozen_threshold_holds_the_target_with_nothing_to_spend(tmp_path: Path) -> None:
    c = _learned_cascade(tmp_path, {"target_agreement": 0.95, "control": "estimate"})
    t = frozen_threshold(c)
    ctrl = c.controller
    pred = ctrl.predicted_agreement([h.predict for h in c.heads])
    i = int(np.searchsorted(ctrl.grid, t))
    # the lowest threshold predicted to reach the target itself: the warm-up's surplus
    # (or a shortfall) the online controller was steering by is not spent over the input
    assert pred[i] >= 0.95 and i > 0 and pred[i - 1] < 0.95
    assert frozen_threshold(_learned_cascade(tmp_path, {"mu": 0.2}, n=300)) == pytest.approx(0.8)


# -- this process and Ray sharing the partitions (Ray stood in for) ----------------------------


class _SlowStart:
    """Stands in for a Ray that is up after ``polls`` looks at it."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.closed = False
        self.startup_s = 0.0

    def ready(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def wait(self) -> float:
        return 2.0

    def close(self) -> None:
        self.closed = True


class _Pipeline:
    """Stands in for Ray Data: the run's own read step and frozen steps, partition by
    partition, and only once this process has taken ``head_start`` more partitions."""

    def __init__(self, run: BatchRun, parts: list, spec: object, out: Path, manifest: object):
        self.run, self.parts, self.spec, self.out, self.manifest = run, parts, spec, out, manifest

    def iter_batches(self, **_: object):  # type: ignore[no-untyped-def]
        from tiered.runner.ray_batch import read_rows

        steps = self.run._steps(self.spec)  # type: ignore[arg-type]
        for p in self.parts:
            batch = pa.table({"part": [p.index]})
            table = read_rows(batch, {p.index: p}, self.manifest.files, self.run.fields,  # type: ignore[attr-defined]
                              str(self.out), self.run.session, {})  # fmt: skip
            for step in steps:
                table = step(table)
            yield table


@pytest.mark.parametrize("polls", [0, 3, 10_000])
def test_this_process_and_ray_share_the_partitions_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, polls: int
) -> None:
    from tiered.runner import ray_batch

    cfg, inp = setup(tmp_path, n=2000)
    starts: list[_SlowStart] = []

    def start(address: str | None) -> _SlowStart:
        starts.append(_SlowStart(polls))
        return starts[-1]

    monkeypatch.setattr(ray_batch, "RayStart", start)
    monkeypatch.setattr(ray_batch, "PIPELINE_START_S", 0.0)

    def pipeline(self, manifest, parts, spec, cpus, out):  # type: ignore[no-untyped-def]
        return _Pipeline(self, parts, spec, out.path, manifest)

    monkeypatch.setattr(BatchRun, "_dataset", pipeline)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".part-000005.0123456789ab.claim").touch()  # another run's: never counts
    result = BatchRun(plan(cfg, inp, out, in_process=False)).run()
    assert parts(out).equals(parts(_local(tmp_path, cfg, inp)))
    assert starts[0].closed and not list(out.glob(".part-*"))  # no claim left behind
    here = result.local_items
    if polls == 0:  # Ray up at once: this process still takes partitions from the back
        assert 0 < here < result.apply_items and result.engine.startswith("ray")
    elif polls == 3:  # up after this process answered a few
        assert 0 < here < result.apply_items
    else:  # never up in time: not waited for
        assert here == result.apply_items and "not needed" in result.engine


def _local(tmp_path: Path, cfg: Path, inp: Path) -> Path:
    local = tmp_path / "local"
    BatchRun(plan(cfg, inp, local)).run()
    return local


# -- on a real local Ray -----------------------------------------------------------------------

TIERED = str(Path(sys.executable).with_name("tiered"))


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    # its own session: the Ray it starts can be killed with it, by its process group id
    return subprocess.Popen(
        [TIERED, "batch", *args, "--no-progress"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "300"},  # the summary's rows on one line each
    )


def _alive(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (an orphan's zombie may stay)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        state, _, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            pids.append(int(d.name))
    return pids


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run and every process of its group (the Ray it started); wait for them."""
    deadline = time.monotonic() + 20
    while _alive(proc.pid):
        assert time.monotonic() < deadline, f"processes {_alive(proc.pid)} outlived SIGKILL"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_run_killed_mid_way_writes_each_record_once(tmp_path: Path) -> None:
    cfg, inp = setup(tmp_path, n=1500, bad=(10, 1200))
    with inp.open("a", encoding="utf-8") as f:  # r3 again: a duplicate, rejected once
        f.write(json.dumps(make_rows(4)[3]) + "\n")
    out = tmp_path / "out"
    common = [str(cfg), str(inp), "-o", str(out), "--partition-records", "100", "--learn", "100"]
    common += ["--max-actors", "1"]  # fewer processes to start on a small machine
    sample = 1  # --learn 100: one partition learned in the run's own process
    # Ray answers every partition but the sample's: the kill comes while Ray works
    proc = _start([*common, "--ray-only", "--throttle", "0.5"], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < sample + 3:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no partition written by Ray"
            time.sleep(0.05)
    finally:
        _kill_group(proc)
        proc.stdout.close()  # type: ignore[union-attr]
    written = len(list(out.glob("part-*.parquet")))
    assert sample + 3 <= written < 16, "the kill came after the run ended"
    # partitions Ray had claimed when it was killed are answered again: by this process
    # (it answers partitions while Ray starts) or by Ray, whoever claims them first
    again = _start(common, tmp_path)
    try:
        stdout, _ = again.communicate(timeout=180)
    finally:
        _kill_group(again)  # Ray stopped with the run; nothing of it may stay
    assert again.returncode == 0, stdout.decode()[-3000:]
    text = stdout.decode()
    assert f"{16 - written} written now, {written} before" in text
    ids = parts(out).column("id").to_pylist()
    assert Counter(ids) == Counter(f"r{i}" for i in range(1500))
    bad = rejects(out)
    assert sorted(r["line"] for r in bad) == [11, 1202, 1503]
    assert "duplicate id 'r3'" in bad[-1]["reason"]
    assert not list(out.glob(".part-*"))  # no claim left behind
    # the same frozen cascade in this process answers every record alike
    local = tmp_path / "local"
    BatchRun(plan(cfg, inp, local, learn_records=100)).run()
    assert parts(local).equals(parts(out))
