"""Scale-out on Redis Streams: workers per second, Redis overhead, one target for a fleet.

    .venv/bin/python benchmarks/scale.py                          # all three parts
    .venv/bin/python benchmarks/scale.py --part scaling --workers 1 2 4 --items 2000
    .venv/bin/python benchmarks/scale.py --part overhead --items 20000
    .venv/bin/python benchmarks/scale.py --part fleet --seeds 2
    .venv/bin/python benchmarks/scale.py --part ray --items 200000 --embedding static_embedding
    .venv/bin/python benchmarks/scale.py --part ray --items 200000 --stage embedding
    .venv/bin/python benchmarks/scale.py --part ray --items 40000 --stage embedding --distinct

The Redis parts start their own redis-server on loopback
(:mod:`tiered.testing.redis_server`) and run real ``tiered run`` worker processes (one
consumer group, one output stream).

- **scaling**: N workers; the expert is an OpenAI-compatible stage behind a loopback fake
  LLM (:class:`tiered.testing.FakeUpstream`) that answers every request after 50 ms,
  at most 4 requests in flight per worker; ``mu = 0`` sends every item to the expert,
  so a worker is I/O-bound (it waits on the expert) and the rate measures how workers
  add up. Items/s count from the moment every worker has joined the group (start-up
  excluded) to the last output entry. Target: N workers >= 0.8 x N x one worker.
- **overhead**: the Redis part of a run alone, in one process, no cascade: read entries
  through the consumer group, write the answers (dedupe + ack + fleet counters in one
  Lua step), share the expert labels; milliseconds per item. Target: < 0.5 ms.
- **fleet**: HEADLINES (``../shared/data/text/headlines_{train,test}.jsonl``, 10k gold
  price headlines, the label column as expert), hashed n-gram stage, target agreement
  0.96: one worker, then three on the same stream, for each seed. Printed: the true
  agreement of the output with the expert on every item, the expert share split into
  warm-up + exploration, audits and deferrals, and the fleet's own estimate with its 95%
  interval, from the shared counters every worker steers by.
- **ray**: ``tiered batch`` on HEADLINES repeated to ``--items`` records, a hashed
  n-gram stage then an embedding stage (``--stage embedding``: the MiniLM transformer;
  ``static_embedding``: MiniLM distilled to a token table) in front of the label column.
  HEADLINES has 10k texts, and a stage keeps the embeddings of 10k texts, so repeats
  cost the transformer nothing: ``--distinct`` makes every text distinct (a repeat's
  texts end in its number), and the transformer encodes every item it is asked about.
  The cascade learns on ``--learn`` records in one process and is frozen, then answers
  the rest. Three engines, side by side in each of ``--repeats`` rounds, every run from
  scratch: one process (``--in-process``); a local Ray started in the background while
  the cascade learns, this process answering partitions from the back meanwhile (the
  default); Ray alone (``--ray-only``). Printed: items/s over the whole run (learning,
  Ray's start and stop included) and at scale (after learning), medians over the rounds
  with the ratio to one process and its spread, the steady rate (first to last partition
  written at scale), the share this process answered, and whether every run wrote the
  same answers; ``tiered run`` (one process, learning all along) for reference.
  Target: Ray >= 0.9 x one process over the whole run.

The machine may be shared: rates are wall clock, so run it on an idle machine to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import redis

from tiered.core import Item
from tiered.io.redis_streams import RedisStreamSink, RedisStreamSource, decode_output_entry
from tiered.io.redis_url import parse_stream_url
from tiered.io.sinks import decision_row
from tiered.io.sources import FieldMap
from tiered.online import estimate_agreement
from tiered.online.fleet import Fleet, tally_row
from tiered.testing import FakeUpstream, sentiment_responder
from tiered.testing.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "text"
TIERED = str(Path(sys.executable).with_name("tiered"))
WORDS = {"good": ["good", "fine", "great"], "bad": ["bad", "poor", "awful"]}


# -- workers ----------------------------------------------------------------------------------


def start_workers(url: str, config: Path, n: int, cwd: Path, *extra: str) -> list[Any]:
    procs = []
    for i in range(n):
        src = f"{url}/in?group=g&consumer=w{i}&block=0.2"
        args = [TIERED, "run", str(config), src, "-o", f"{url}/out", "--no-progress", *extra]
        procs.append(
            subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    return procs


def wait_joined(r: redis.Redis, n: int, procs: list[Any], timeout_s: float = 120) -> None:
    """Until every worker has read from the group once (start-up done)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a worker ended: {p.stdout.read().decode()[-2000:]}")
        try:
            if len(r.xinfo_consumers("in", "g")) >= n:
                return
        except redis.ResponseError:
            pass  # no group yet
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not start")
        time.sleep(0.05)


def wait_output(r: redis.Redis, n: int, procs: list[Any], timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    while r.xlen("out") < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"only {r.xlen('out')} of {n} answers came")
        time.sleep(0.01)
    return time.perf_counter()


def stop(procs: list[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)  # stops at the next batch, after a checkpoint
    for p in procs:
        p.wait(timeout=60)
        p.stdout.close()


def add(r: redis.Redis, records: Sequence[dict[str, str]]) -> None:
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.xadd("in", rec)
    pipe.execute()


def run_fleet(
    config: str, records: Sequence[dict[str, str]], n: int
) -> tuple[float, list[dict[str, Any]], dict[str, int], list[dict[str, Any]]]:
    """``n`` workers with ``config`` on a fresh Redis: start them, wait until all joined,
    add ``records``, wait for every answer. Returns (seconds from the records added to the
    last answer, the output rows, the fleet's shared counters, each worker's own learner
    counters from its last checkpoint)."""
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "run.yaml"
        cfg.write_text(config)
        r = redis.Redis.from_url(server.url, decode_responses=True)
        procs = start_workers(server.url, cfg, n, Path(tmp))
        try:
            wait_joined(r, n, procs)
            add(r, records)
            t0 = time.perf_counter()
            wall = wait_output(r, len(records), procs) - t0
        finally:
            stop(procs)
        rows = [decode_output_entry(f) for _, f in r.xrange("out")]
        counts = {k: int(v) for k, v in r.hgetall("out:fleet").items()}
        r.close()
        workers = [own_counters(p) for p in sorted(Path(tmp).glob("*.tiered.sqlite"))]
    return wall, rows, counts, workers


def own_counters(store: Path) -> dict[str, Any]:
    """A worker's own learner counters (items, expert calls, warm-up + exploration)."""
    from tiered.store.runs import RunStore

    st = RunStore(store)
    try:
        cp = st.latest()
    finally:
        st.close()
    return dict(cp.learner["counters"]) if cp is not None and cp.learner else {}


# -- scaling ----------------------------------------------------------------------------------


def synthetic(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(["good", "bad"])
        text = " ".join(rng.choice(WORDS[kind]) for _ in range(3)) + f" film number {i}"
        out.append({"id": f"r{i}", "text": text})
    return out


def scaling(workers: Sequence[int], n_items: int) -> None:
    print(f"\nscaling: {n_items:,} items, expert = fake LLM answering in 50 ms, 4 in flight")
    print(f"{'workers':>8} {'items/s':>9} {'vs 1 worker':>12} {'target':>8}")
    base: float | None = None
    with FakeUpstream(sentiment_responder, record=False) as llm:
        config = (
            "input: {id_field: id}\n"
            "cheap: [{kind: hashed_ngram}]\n"
            "expert:\n"
            "  model: {kind: openai, base_url: '" + llm.base_url + "', model: slow-50,\n"
            "          api_key_env: null, labels: [good, bad],\n"
            "          words: {good: positive, bad: negative}, max_concurrency: 4,\n"
            "          cache: false, max_retries: 0}\n"
            "  usd_per_call: 0.001\n"
            "online: {mu: 0.0}\n"
            "batch_size: 32\n"
        )
        for n in workers:
            wall, _, _, _ = run_fleet(config, synthetic(n_items), n)
            rate = n_items / wall
            base = base or rate
            ratio = rate / base
            ok = "ok" if n == 1 or ratio >= 0.8 * n else "MISSED"
            print(f"{n:>8} {rate:>9.1f} {ratio:>11.2f}x {f'{0.8 * n:.1f}x ' + ok:>8}")


# -- overhead ---------------------------------------------------------------------------------


class _NoLearning:
    position = 0

    def learn_labels(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        """Only the Redis traffic of sharing labels is measured."""


def overhead(n_items: int, batch_size: int = 256) -> None:
    print(f"\noverhead: Redis alone, {n_items:,} items, batches of {batch_size}, one process")
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        raw = redis.Redis.from_url(server.url)
        add(r, [{"id": f"r{i}", "text": f"headline number {i} about gold"} for i in range(n_items)])
        url = parse_stream_url(f"{server.url}/in?group=g&consumer=a&block=0", role="input")
        src = RedisStreamSource(url, FieldMap(id_field="id"), exit_when_idle=0.0)
        fleet = Fleet(r, raw, "out", "a", "bench", snapshot_every_s=float("inf"))
        fleet.cascade = _NoLearning()  # type: ignore[assignment]
        sink = RedisStreamSink(
            r, "out", "out:done", ack=("in", "g"), tally=tally_row, tally_key="out:fleet",
            on_totals=fleet.on_totals,
        )  # fmt: skip
        rng = random.Random(0)
        timing = {"read": 0.0, "write": 0.0, "share": 0.0}
        t = time.perf_counter()
        for batch in src.batches(batch_size=batch_size):
            now = time.perf_counter()
            timing["read"] += now - t
            if not batch.items:
                break
            decisions = []
            for it in batch.items:  # about the expert share of a learned cascade
                up = rng.random() < 0.3
                decisions.append(
                    SimpleNamespace(
                        id=it.id, label="up", stage="expert" if up else "ngram",
                        confidence=1.0 if up else 0.9, cost=0.002 if up else 0.0,
                        audited=False, expert_label="up" if up else None, cheap_label=None,
                    )
                )  # fmt: skip
            rows = [
                decision_row(d.id, d.label, d.stage, d.confidence, d.cost, d.audited,
                             d.expert_label, d.cheap_label)
                for d in decisions
            ]  # fmt: skip
            t0 = time.perf_counter()
            fleet.claim(len(batch.items))  # as the cascade does before a batch
            fleet.shared(batch.items, decisions, np.ones(len(decisions)))  # type: ignore[arg-type]
            t1 = time.perf_counter()
            sink.write(rows, batch.end)
            t2 = time.perf_counter()
            fleet.after_batch(batch.items, decisions)  # type: ignore[arg-type]
            t = time.perf_counter()
            timing["write"] += t2 - t1
            timing["share"] += t - t2 + t1 - t0
        assert r.xlen("out") == n_items and r.xpending("in", "g")["pending"] == 0
        r.close()
        raw.close()
        src.close()
    total = sum(timing.values())
    per = {k: 1000 * v / n_items for k, v in timing.items()}
    print(f"{'read':>8} {'write':>8} {'share':>8} {'total':>8}   (ms per item)")
    print(
        f"{per['read']:>8.4f} {per['write']:>8.4f} {per['share']:>8.4f} "
        f"{1000 * total / n_items:>8.4f}   target < 0.5 ms: "
        f"{'ok' if 1000 * total / n_items < 0.5 else 'MISSED'}"
    )


# -- fleet ------------------------------------------------------------------------------------


def headlines() -> list[dict[str, str]]:
    rows = []
    for split in ("train", "test"):
        with open(DATA / f"headlines_{split}.jsonl", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return [{"id": str(r["id"]), "text": r["text"], "label": str(r["label"])} for r in rows]


def fleet_run(records: list[dict[str, str]], n: int, seed: int, target: float) -> dict[str, Any]:
    truth = {rec["id"]: rec["label"] for rec in records}
    config = (
        "input: {id_field: id}\n"
        "cheap: [{kind: hashed_ngram}]\n"
        "expert: {model: {kind: label_column, field: label}, usd_per_call: 0.002}\n"
        f"online: {{target_agreement: {target}}}\n"
        f"seed: {seed}\n"
    )
    wall, rows, counts, workers = run_fleet(config, records, n)
    n_expert = counts.get("stage:expert", 0)
    n_all = sum(v for k, v in counts.items() if k.startswith("stage:"))
    est = estimate_agreement(
        n_expert,
        n_all - n_expert,
        counts.get("audits", 0),
        counts.get("agree", 0),
        confidence=0.95,
        method="wilson",
    )
    forced = sum(int(w.get("explored", 0)) for w in workers)  # warm-up + exploration
    audits = counts.get("audits", 0)
    return {
        "true": statistics.fmean(row["label"] == truth[row["id"]] for row in rows),
        "share": counts.get("called", 0) / len(rows),
        "forced": forced / len(rows),
        "audits": audits / len(rows),
        "deferred": (counts.get("called", 0) - audits - forced) / len(rows),
        "estimate": est.agreement,
        "low": est.low,
        "high": est.high,
        "items_s": len(rows) / wall,
    }


def fleet(seeds: int, target: float) -> None:
    records = headlines()
    print(
        f"\nfleet: HEADLINES, {len(records):,} headlines, target {target}, {seeds} seed(s), "
        "control anytime (the default: 10% audits)"
    )
    print(
        f"{'workers':>8} {'seed':>5} {'true agr.':>10} {'expert share':>13} {'= forced':>9} "
        f"{'+ audits':>9} {'+ deferred':>11} {'fleet estimate [95% interval]':>31} "
        f"{'items/s':>8} {'load':>5}"
    )
    got: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
    for seed in range(seeds):
        for n in (1, 3):  # side by side: the machine's load changes over time
            m = fleet_run(records, n, seed, target)
            got[n].append(m)
            interval = f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
            print(
                f"{n:>8} {seed:>5} {m['true']:>10.3f} {m['share']:>12.1%} {m['forced']:>9.1%} "
                f"{m['audits']:>9.1%} {m['deferred']:>11.1%} {interval:>31} "
                f"{m['items_s']:>8.0f} {os.getloadavg()[0]:>5.1f}"
            )
    if seeds > 1:
        for n, ms in got.items():
            mean = {k: statistics.fmean(m[k] for m in ms) for k in ms[0]}
            print(
                f"{n:>8} {'mean':>5} {mean['true']:>10.3f} {mean['share']:>12.1%} "
                f"{mean['forced']:>9.1%} {mean['audits']:>9.1%} {mean['deferred']:>11.1%}"
            )
    print("forced: warm-up and exploration (sent up whatever the cheap stage said)")


# -- ray --------------------------------------------------------------------------------------


def write_headlines(path: Path, n: int, distinct: bool = False) -> None:
    """HEADLINES repeated to ``n`` records (ids made unique per repeat; with ``distinct``,
    the texts too: a repeat's texts end in its number, so no cache of texts helps)."""
    base = headlines()
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            r = base[i % len(base)]
            k = i // len(base)
            text = f"{r['text']} ({k})" if distinct and k else r["text"]
            rec = {"id": f"{k}-{r['id']}", "text": text, "label": r["label"]}
            f.write(json.dumps(rec) + "\n")


def ray_batch(
    n_items: int,
    embedding: str,
    learn: int,
    per_part: int,
    target: float,
    with_run: bool,
    repeats: int,
    distinct: bool = False,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tiered.runner import StreamRun, make_plan
    from tiered.runner.ray_batch import BatchResult, BatchRun
    from tiered.runner.ray_plan import make_batch_plan

    print(
        f"\nray: {n_items:,} HEADLINES records, hashed_ngram -> {embedding} -> label column, "
        f"target {target}, frozen after {learn:,} records, {per_part:,} records a partition, "
        f"{repeats} round(s)" + (", every text distinct" if distinct else "")
    )
    config = (
        "input: {id_field: id}\n"
        f"cheap: [{{kind: hashed_ngram}}, {{kind: {embedding}}}]\n"
        "expert: {model: {kind: label_column, field: label}, usd_per_call: 0.002}\n"
        f"online: {{target_agreement: {target}}}\n"
    )

    def answers(out: Path) -> pa.Table:
        return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])

    # every run from scratch (learning included), the engines side by side in each round
    engines = {
        "one process (--in-process)": {"in_process": True},
        "Ray, shared with this process": {},
        "Ray only (--ray-only)": {"local_share": False},
    }
    got: dict[str, list[tuple[BatchResult, float, float]]] = {k: [] for k in engines}
    same = True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg, inp = tmp / "batch.yaml", tmp / "in.jsonl"
        cfg.write_text(config)
        write_headlines(inp, n_items, distinct)
        opts = {"learn_records": learn, "partition_records": per_part}
        first: pa.Table | None = None
        for r in range(repeats):
            for name, switches in engines.items():
                out = tmp / f"out{r}-{len(got[name])}-{hash(name) & 0xFFFF}"
                stamps: list[float] = []
                t0 = time.perf_counter()
                res = BatchRun(
                    make_batch_plan(cfg, inp, out, **opts, **switches),
                    on_partition=lambda done, total, s=stamps: s.append(time.perf_counter()),
                ).run()
                wall = time.perf_counter() - t0
                # steady state: from the first partition written at scale to the last
                k = len(res_sample(out))
                n = len(stamps) - 1 - k
                per = (stamps[-1] - stamps[k]) / n if n > 0 else 0.0
                got[name].append((res, wall, per_part / per if per else float("nan")))
                table = answers(out)
                first = table if first is None else first
                same = same and table.equals(first)
                print(f"  round {r + 1}: {name:<30} {wall:6.1f} s  load {os.getloadavg()[0]:.1f}")
        run = None
        if with_run:
            plan = make_plan([str(cfg), str(inp)], tmp / "run.jsonl", progress=False)
            run = StreamRun(plan).run()

    base = got["one process (--in-process)"]
    res0 = base[0][0]
    s = res0.summary
    print(
        f"learned on {res0.learned_records:,} records; then {s.expert_share:.1%} expert calls, "
        f"true agreement {s.true_agreement:.3f}, estimate {s.agreement_text()}"
    )
    print(
        f"\n{'':<31} {'whole run':>10} {'vs one':>7} {'spread':>12} {'at scale':>9} {'vs one':>7} "
        f"{'steady':>8} {'here':>6}"
    )
    print(f"{'':<31} {'items/s':>10} {'process':>7} {'':>12} {'items/s':>9} {'process':>7} "
          f"{'items/s':>8} {'share':>6}")  # fmt: skip
    for name, rows in got.items():
        whole = [n_items / wall for _, wall, _ in rows]
        ratio = [w / (n_items / b[1]) for w, b in zip(whole, base, strict=True)]
        scale = [res.apply_items_per_s for res, _, _ in rows]
        sratio = [x / b[0].apply_items_per_s for x, b in zip(scale, base, strict=True)]
        steady = statistics.median(st for _, _, st in rows)
        here = statistics.fmean(res.local_items / max(res.apply_items, 1) for res, _, _ in rows)
        spread = f"{min(ratio):.2f}-{max(ratio):.2f}x"
        print(
            f"{name:<31} {statistics.median(whole):>10,.0f} {statistics.median(ratio):>6.2f}x "
            f"{spread:>12} {statistics.median(scale):>9,.0f} {statistics.median(sratio):>6.2f}x "
            f"{steady:>8,.0f} {here:>6.0%}"
        )
    if run is not None:
        print(f"{'tiered run (online, learns)':<31} {run.items / run.wall_s:>10,.0f}")
    ratios = [n_items / w / (n_items / b[1]) for (_, w, _), b in
              zip(got["Ray, shared with this process"], base, strict=True)]  # fmt: skip
    ok = "ok" if statistics.median(ratios) >= 0.9 else "MISSED"
    print(
        f"target: Ray >= 0.9x one process, whole run (median of rounds): {ok}; "
        f"same answers everywhere: {'yes' if same else 'NO'}"
    )
    print(
        "whole run: learning, Ray's start and stop included; at scale: after learning; "
        "steady: per partition between the first and the last one written at scale; "
        "here share: items this process answered itself"
    )


def res_sample(out: Path) -> list[int]:
    """The learning sample's partitions (written first, before anything at scale)."""
    return list(json.loads((out / "_batch.json").read_text())["sample"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = ["scaling", "overhead", "fleet", "ray", "all"]
    ap.add_argument("--part", choices=parts, default="all")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--items", type=int, default=None, help="items (scaling, overhead, ray)")
    ap.add_argument(
        "--embedding",
        "--stage",
        choices=["static_embedding", "embedding"],
        default=None,
        help="ray: the second cheap stage (embedding: the MiniLM transformer)",
    )
    ap.add_argument(
        "--distinct",
        action="store_true",
        help="ray: every text distinct (HEADLINES repeats end in their number): no text "
        "cache helps, the transformer encodes every item it sees",
    )
    ap.add_argument("--learn", type=int, default=5000, help="ray: records learned on")
    ap.add_argument("--partition-records", type=int, default=10_000)
    ap.add_argument("--no-run", action="store_true", help="ray: skip the `tiered run` row")
    ap.add_argument("--repeats", type=int, default=3, help="ray: rounds of the engines")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.96)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (may be shared)")
    if a.part in ("scaling", "all"):
        scaling(a.workers, a.items or 2000)
    if a.part in ("overhead", "all"):
        overhead(a.items or 20000)
    if a.part in ("fleet", "all"):
        fleet(a.seeds, a.target)
    if a.part in ("ray", "all"):
        emb = a.embedding or "static_embedding"
        ray_batch(
            a.items or 200_000,
            emb,
            a.learn,
            a.partition_records,
            a.target,
            not a.no_run,
            a.repeats,
            a.distinct,
        )


if __name__ == "__main__":
    main()
