"""Evaluation throughput: replay a 5-model cascade over a large synthetic log.

    .venv/bin/python benchmarks/eval_throughput.py [--n 100000] [--repeats 5]

Generates a synthetic replay log (labelled synthetic; see ``tiered.replay.synthetic``),
writes and loads it as JSONL (the loader's speed is reported too), builds a cascade of
five ``Replay`` stages with log-prob threshold rules, and times ``Cascade.run`` over all
items. Target: >= 200k items/s for 100k items.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tiered.core.spec import BuildContext, CascadeSpec
from tiered.eval import evaluate
from tiered.replay.load import load_replay
from tiered.replay.model import replay_items
from tiered.replay.synthetic import DEFAULT_MODELS, make_synthetic_log, write_jsonl

THRESHOLDS = (-0.05, -0.1, -0.15, -0.2)  # log-prob; the last stage answers the rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="items (default 100000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    rows = make_synthetic_log(args.n, seed=0, missing_rate=0.001)
    t_gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(rows, Path(tmp) / "synthetic_100k.jsonl")
        del rows
        t0 = time.perf_counter()
        log = load_replay(path)
        t_load = time.perf_counter() - t0

    names = [m.name for m in DEFAULT_MODELS]
    spec = CascadeSpec.model_validate(
        {
            "name": "throughput",
            "stages": [
                {
                    "name": name,
                    "model": {"kind": "replay", "model": name},
                    **(
                        {"rule": {"kind": "threshold", "signal": "logprob", "threshold": thr}}
                        if thr is not None
                        else {}
                    ),
                }
                for name, thr in zip(names, [*THRESHOLDS, None], strict=True)
            ],
        }
    )
    cascade = spec.build(BuildContext(resources={"replay_log": log}))
    t0 = time.perf_counter()
    items = replay_items(log)
    t_items = time.perf_counter() - t0

    cascade.run(items[:1000])  # warm up
    times = []
    result = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = cascade.run(items)
        times.append(time.perf_counter() - t0)
    assert result is not None
    t0 = time.perf_counter()
    report = evaluate(result, log, cascade=cascade)
    t_eval = time.perf_counter() - t0

    n = len(items)
    best, med = min(times), statistics.median(times)
    table = Table(
        title=f"eval throughput: {n:,} synthetic items, {len(names)}-stage replay cascade"
    )
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("rate", justify="right")
    table.add_row("generate synthetic rows", f"{t_gen:.2f}", f"{n / t_gen:,.0f} rows/s")
    table.add_row("load_replay (JSONL, validated)", f"{t_load:.2f}", f"{n / t_load:,.0f} rows/s")
    table.add_row("replay_items", f"{t_items:.3f}", f"{n / t_items:,.0f} items/s")
    table.add_row(
        f"Cascade.run, best of {args.repeats}", f"{best:.3f}", f"[bold]{n / best:,.0f} items/s[/]"
    )
    table.add_row(f"Cascade.run, median of {args.repeats}", f"{med:.3f}", f"{n / med:,.0f} items/s")
    table.add_row("evaluate (metrics + oracle)", f"{t_eval:.3f}", f"{n / t_eval:,.0f} items/s")
    console = Console()
    console.print(table)
    share = ", ".join(f"{k} {v:.0%}" for k, v in report.stage_share.items())
    console.print(
        f"cascade quality {report.quality:.3f} at relative cost {report.relative_cost:.3f} "
        f"(top {report.top_model} {report.top_quality:.3f}); stages: {share}"
    )
    verdict = "meets" if n / med >= 200_000 else "MISSES"
    console.print(f"median {n / med:,.0f} items/s {verdict} the 200k items/s target")


if __name__ == "__main__":
    main()
