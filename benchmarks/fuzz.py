"""Fuzz every loader with thousands of hostile files; count tracebacks and hangs.

The cases and the verdict are the ones of ``tests/test_fuzz_loaders.py`` (in
``tests/_fuzz.py``): files built from a valid one by structural edits (hostile values,
dropped and added keys) and byte edits (bad UTF-8, truncation, deep nesting, YAML
aliases ...). A case is ``ok`` (a valid result), ``error`` (a clean TieredError naming the
file) or a *finding*: another exception, a broken result, a message over several lines,
or a case over the time limit (a hang). Then each command (``calibrate``, ``inspect``,
``eval``, ``run``, ``serve --check``) runs in-process on fewer cases of the file it reads:
success, or exit 2 with one ``error:`` line naming the file.

    .venv/bin/python benchmarks/fuzz.py [--cases 2000] [--cli-cases 200] [--only NAME]

Prints one row per loader and command, each followed by its distinct findings and inputs.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests._fuzz

from tests._fuzz import Loader, judge, loaders
from tests._fuzz_cli import cli_loaders


def fuzz(
    loader: Loader, cases: int, limit_s: float, rng_seed: int
) -> tuple[Counter[str], list[tuple[str, bytes]], float]:
    """Run ``cases`` cases of ``loader``; outcome counts, findings, slowest case (s)."""
    counts: Counter[str] = Counter()
    findings: list[tuple[str, bytes]] = []
    slowest = 0.0

    @seed(rng_seed)
    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # count every case; no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @given(data=loader.files)
    def case(data: bytes) -> None:
        nonlocal slowest
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / loader.filename
            path.write_bytes(data)
            verdict = judge(loader.check, path, limit_s)
        counts[verdict.outcome] += 1
        slowest = max(slowest, verdict.seconds)
        if verdict.finding:
            kind = "hang" if verdict.detail.startswith("hang") else "traceback"
            counts[kind] += 1
            findings.append((verdict.detail, data))

    case()
    return counts, findings, slowest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per loader")
    ap.add_argument("--cli-cases", type=int, default=200, help="cases per command")
    ap.add_argument("--limit-s", type=float, default=60.0, help="a case over this is a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="only loaders/commands whose name has this")
    args = ap.parse_args()

    runs = [(ld, args.cases) for ld in loaders()] + [(ld, args.cli_cases) for ld in cli_loaders()]
    if args.only:
        runs = [(ld, n) for ld, n in runs if args.only.lower() in ld.name.lower()]
    header = f"{'loader / command':<26} {'cases':>6} {'ok':>6} {'error':>6} {'traceback':>9} "
    header += f"{'hang':>5} {'slowest s':>9} {'total s':>8}"
    print(header)
    print("-" * len(header))
    all_findings: list[tuple[str, str, bytes]] = []
    seen: set[str] = set()
    for loader, n in runs:
        t0 = time.perf_counter()
        counts, findings, slowest = fuzz(loader, n, args.limit_s, args.seed)
        took = time.perf_counter() - t0
        total = counts["ok"] + counts["error"] + counts["finding"]
        print(
            f"{loader.name:<26} {total:>6} {counts['ok']:>6} {counts['error']:>6} "
            f"{counts['traceback']:>9} {counts['hang']:>5} {slowest:>9.2f} {took:>8.1f}",
            flush=True,
        )
        all_findings += [(loader.name, detail, data) for detail, data in findings]
        for detail, data in findings:  # each distinct one at once: a long run may be cut
            key = loader.name + re.sub(r"/tmp/\S+", "", detail)[:160]
            if key not in seen:
                seen.add(key)
                print(f"  [{loader.name}] {detail[-2500:]}\n  input: {data[:400]!r}", flush=True)
    print(f"\n{len(all_findings)} findings ({len(seen)} distinct)")


if __name__ == "__main__":
    main()
