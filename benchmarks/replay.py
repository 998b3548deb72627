"""Calibrate -> evaluate over a folder of replay logs; one table (and its markdown) out.

For every ``*.jsonl`` log in the folder (default ``../shared/data/replay``):

- with a ``<name>_test.jsonl`` next to ``<name>_train.jsonl``: calibrate on train, evaluate
  the saved cascade on test through the engine;
- otherwise k-fold cross-validation: calibrate on k-1 folds (the calibrator runs its own
  inner cross-validation there), evaluate the cascade on the held-out fold through the
  engine (``tiered.eval``), and pool the held-out results of all folds.

Columns: the best single model (on the whole log) with its quality and cost per query;
the cascade's held-out quality, its difference to the best model in points, its relative
cost (cascade cost / best model cost); the standard error of that difference from the
finite number of queries (paired: per query, the cascade's held-out quality, averaged over
repeats, minus the best model's; so ± SE is the noise any cascade's Δ carries on that log);
the difference to the best single model *of each training fold* scored on its held-out
fold (the single-model choice made under the same protocol, free of the hindsight in
picking the best model on the whole log); the oracle's relative cost (cheapest correct model
per query); how many single models the calibrated frontier beats held out (for each
model: the cascade calibrated to that model's training-fold quality reaches, pooled
held out, that model's held-out quality minus ``--tolerance`` (absolute, default 0.5 pt)
at a mean cost at least ``--cost-tolerance`` (default 1%) below the model's; so the
cheapest model can never be beaten, and a cascade that is that model alone is not); and
the seconds taken.

It also times one calibration of a 5-model, 1,500-row log (synthetic, generated here)
and prints the issue's targets for the chain and RouterBench logs.

    .venv/bin/python benchmarks/replay.py [--data DIR] [--folds 5] [--min-quality top]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiered.calibrate import Calibration, calibrate
from tiered.core.spec import BuildContext
from tiered.eval import evaluate_cascade, oracle_bound, single_models, top_model
from tiered.replay.load import load_replay
from tiered.replay.log import ReplayLog
from tiered.replay.synthetic import make_synthetic_log, write_jsonl

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "replay"


@dataclass
class Row:
    log: str
    n: int
    models: int
    mode: str
    top: str
    top_quality: float
    top_cost: float
    quality: float
    cost: float
    oracle_cost: float
    beaten: list[str] = field(default_factory=list)
    not_beaten: list[str] = field(default_factory=list)
    calibrate_s: float = 0.0
    seconds: float = 0.0
    skipped: int = 0
    structures: list[str] = field(default_factory=list)
    delta_se: float = math.nan  # standard error of Δ from the queries (paired, in points)
    fold_top_quality: float = math.nan  # the training folds' best single models, held out
    # per single model: (its held-out quality, cost; the cascade fitted to it, held out)
    singles_detail: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        return 100 * (self.quality - self.top_quality)

    @property
    def delta_fold_top(self) -> float:
        return 100 * (self.quality - self.fold_top_quality)

    @property
    def relative(self) -> float:
        return self.cost / self.top_cost

    @property
    def oracle_relative(self) -> float:
        return self.oracle_cost / self.top_cost


@dataclass
class _Pooled:
    """Sums over held-out queries."""

    n: int = 0
    quality: float = 0.0
    cost: float = 0.0

    def add(self, n: int, quality: float, cost: float) -> None:
        self.n += n
        self.quality += quality * n
        self.cost += cost * n

    @property
    def mean(self) -> tuple[float, float]:
        return self.quality / self.n, self.cost / self.n


def _held_out(cal: Calibration, test: ReplayLog) -> tuple[float, float]:
    """Quality and cost of the calibrated cascade file replayed on ``test`` by the engine."""
    q, c, _ = _held_out_rows(cal, test)
    return q, c


def _held_out_rows(cal: Calibration, test: ReplayLog) -> tuple[float, float, np.ndarray]:
    """As :func:`_held_out`, with the quality of every test query."""
    cascade = cal.spec.build(BuildContext(resources={"replay_log": test}))
    result, report = evaluate_cascade(cascade, test)
    return report.quality, report.cost_per_item, np.asarray(result.quality, dtype=float)


def _add_fold_top(acc: _Pooled, cal: Calibration, test: ReplayLog) -> None:
    """Add the held-out quality and cost of the best single model of the training rows."""
    j = test.model_index(cal.top_model)
    acc.add(len(test), float(test.quality[:, j].mean()), float(test.cost[:, j].mean()))


def _singles_check(
    cal: Calibration, test: ReplayLog, pooled: dict[str, _Pooled], singles: dict[str, _Pooled]
) -> None:
    """For each single model: the cascade calibrated to its (training) quality, held out."""
    for p in cal.singles:
        name = p.stages[0]
        try:
            other = cal.with_objective(min_quality=p.quality)
        except Exception:
            continue
        q, c = _held_out(other, test)
        pooled.setdefault(name, _Pooled()).add(len(test), q, c)
        j = test.model_index(name)
        singles.setdefault(name, _Pooled()).add(
            len(test), float(test.quality[:, j].mean()), float(test.cost[:, j].mean())
        )


def run_log(path: Path, args: argparse.Namespace, rejects: Path) -> Row:
    started = time.perf_counter()
    log = load_replay(path, skip_bad=True, reject_path=rejects / f"{path.stem}.rejects.jsonl")
    kw = {"folds": args.inner_folds, "cv_tolerance": args.tolerance, "cv_caution": args.caution}
    target = args.min_quality
    test_path = path.with_name(path.name.replace("_train", "_test"))
    pooled = _Pooled()
    fold_top = _Pooled()  # each training fold's best single model, held out
    per_model: dict[str, _Pooled] = {}
    singles: dict[str, _Pooled] = {}
    cal_seconds = []
    structures = []
    check_singles = args.singles == "all" or (args.singles != "none" and args.singles in path.name)
    if test_path != path and test_path.exists():
        mode = "train/test"
        test = load_replay(test_path, skip_bad=True, reject_path=rejects / "test.rejects.jsonl")
        t = time.perf_counter()
        cal = calibrate(log, min_quality=target, **kw)
        cal_seconds.append(time.perf_counter() - t)
        structures.append(cal.chosen.text())
        q, c, per_row = _held_out_rows(cal, test)
        pooled.add(len(test), q, c)
        _add_fold_top(fold_top, cal, test)
        if check_singles:
            _singles_check(cal, test, per_model, singles)
        reference = test
    else:
        mode = f"{args.folds}-fold CV" + (f" x{args.repeats}" if args.repeats > 1 else "")
        rng = np.random.default_rng(args.seed)
        per_row = np.zeros(len(log))  # held-out quality per query, averaged over repeats
        for r in range(args.repeats):
            assign = rng.permutation(len(log)) % args.folds
            for k in range(args.folds):
                train, test = log.subset(assign != k), log.subset(assign == k)
                t = time.perf_counter()
                cal = calibrate(train, min_quality=target, seed=args.seed + 7 * r + k, **kw)
                cal_seconds.append(time.perf_counter() - t)
                structures.append(cal.chosen.text())
                q, c, rows_q = _held_out_rows(cal, test)
                pooled.add(len(test), q, c)
                _add_fold_top(fold_top, cal, test)
                per_row[assign == k] += rows_q / args.repeats
                if check_singles:
                    _singles_check(cal, test, per_model, singles)
        reference = log
    top = top_model(single_models(reference))
    quality, cost = pooled.mean
    diff = per_row - reference.quality[:, reference.model_index(top.name)]
    delta_se = 100 * float(np.nanstd(diff)) / math.sqrt(max(len(diff), 1))
    row = Row(
        log=path.stem,
        n=len(log),
        models=log.n_models,
        mode=mode,
        top=top.name,
        top_quality=top.quality,
        top_cost=top.cost_per_item,
        quality=quality,
        cost=cost,
        oracle_cost=oracle_bound(reference).cost_per_item,
        calibrate_s=float(np.mean(cal_seconds)),
        skipped=log.skipped,
        structures=structures,
        delta_se=delta_se,
        fold_top_quality=fold_top.mean[0],
    )
    for name, cas in per_model.items():
        cq, cc = cas.mean
        sq, sc = singles[name].mean
        row.singles_detail[name] = (sq, sc, cq, cc)
        won = cq >= sq - args.tolerance and cc < (1 - args.cost_tolerance) * sc
        (row.beaten if won else row.not_beaten).append(name)
    row.seconds = time.perf_counter() - started
    return row


def time_synthetic(n: int = 1500) -> float:
    """Seconds to calibrate (5-fold CV included) a synthetic 5-model log of ``n`` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(make_synthetic_log(n, seed=7), Path(tmp) / "synthetic_5x1500.jsonl")
        log = load_replay(path)
        assert log.n_models == 5 and len(log) == n
        t = time.perf_counter()
        calibrate(log, min_quality="top")
        return time.perf_counter() - t


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        beats = (
            f"{len(r.beaten)}/{len(r.beaten) + len(r.not_beaten)}"
            if r.beaten or r.not_beaten
            else "-"
        )
        out.append(
            [
                r.log,
                f"{r.n:,}",
                str(r.models),
                r.mode,
                r.top,
                _pct(r.top_quality),
                f"${r.top_cost:.3g}",
                _pct(r.quality),
                f"{r.delta:+.1f} ± {r.delta_se:.1f}",
                f"{r.delta_fold_top:+.1f}",
                f"{r.relative:.3f}",
                f"{r.oracle_relative:.3f}",
                beats,
                f"{r.calibrate_s:.1f}",
                f"{r.seconds:.0f}",
            ]
        )
    return out


HEADERS = [
    "log",
    "queries",
    "models",
    "split",
    "best single model",
    "its quality",
    "its cost/query",
    "cascade quality",
    "Δ pts ± SE",
    "Δ vs fold top",
    "cascade rel. cost",
    "oracle rel. cost",
    "singles beaten",
    "calibrate s",
    "total s",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of replay logs")
    ap.add_argument("--pattern", default="*.jsonl", help="which logs (glob)")
    ap.add_argument("--exclude", default="_test.jsonl$", help="regex of logs to leave out")
    ap.add_argument("--min-quality", default="top")
    ap.add_argument("--folds", type=int, default=5, help="outer folds (logs without a test split)")
    ap.add_argument("--inner-folds", type=int, default=5, help="the calibrator's own folds")
    ap.add_argument("--tolerance", type=float, default=0.005, help="cv_tolerance (quality)")
    ap.add_argument("--caution", type=float, default=1.0, help="cv_caution (standard errors)")
    ap.add_argument(
        "--cost-tolerance",
        type=float,
        default=0.01,
        help="a single model is beaten only by a cascade at least this share cheaper",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeats", type=int, default=1, help="repeat the outer CV with new folds (pooled)"
    )
    ap.add_argument(
        "--singles",
        default="routerbench",
        help="check the frontier against every single model (slow) on logs whose name "
        "contains this ('all', 'none')",
    )
    ap.add_argument("--no-timing", action="store_true", help="skip the 5x1,500 timing run")
    ap.add_argument(
        "--show-cascades", action="store_true", help="print the cascades chosen per fold"
    )
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    logs = sorted(p for p in args.data.glob(args.pattern) if not re.search(args.exclude, p.name))
    if not logs:
        console.print(f"[red]no logs matching {args.pattern} in {args.data}[/]")
        return 1
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in logs:
            console.print(f"[dim]{path.name} ...[/]", end=" ")
            row = run_log(path, args, Path(tmp))
            console.print(f"[dim]{row.seconds:.0f}s[/]")
            rows.append(row)

    table = Table(title=f"Calibrated cascades at --min-quality {args.min_quality}, held out")
    for h in HEADERS:
        table.add_column(
            h, justify="left" if h in ("log", "split", "best single model") else "right"
        )
    for cells in _fmt_rows(rows):
        table.add_row(*cells)
    console.print(table)

    chains = [r for r in rows if r.log.startswith("chains_")]
    bench = [r for r in rows if r.log.startswith("routerbench_")]
    lines = []
    if chains:
        worst = min(r.delta for r in chains)
        mean_rel = float(np.mean([r.relative for r in chains]))
        ok = worst >= -1.0 and mean_rel <= 0.65
        lines.append(
            f"chain logs ({len(chains)}): worst Δ quality {worst:+.1f} pts (target >= -1.0), "
            f"mean relative cost {mean_rel:.3f} (target <= 0.65): {'MET' if ok else 'NOT MET'}"
        )
        lines.append(
            f"chain logs: mean Δ {np.mean([r.delta for r in chains]):+.2f} pts; against each "
            f"training fold's best model held out: mean "
            f"{np.mean([r.delta_fold_top for r in chains]):+.2f}, worst "
            f"{min(r.delta_fold_top for r in chains):+.1f} pts"
        )
    for r in bench:
        if r.beaten or r.not_beaten:
            lines.append(
                f"{r.log}: cascade beats {len(r.beaten)}/{len(r.beaten) + len(r.not_beaten)} "
                f"single models held out (quality within {100 * args.tolerance:.1f} pt, cost "
                f"at least {100 * args.cost_tolerance:.0f}% lower); not beaten: "
                f"{', '.join(r.not_beaten) or 'none'}"
            )
    skipped = [f"{r.log} ({r.skipped})" for r in rows if r.skipped]
    if skipped:
        lines.append("bad lines skipped by the loader: " + ", ".join(skipped))
    timing = None
    if not args.no_timing:
        timing = time_synthetic()
        lines.append(
            f"calibration of a 5-model, 1,500-row log (synthetic, 5-fold CV included): "
            f"{timing:.1f} s (target < 30 s)"
        )
    for line in lines:
        console.print(line)

    # markdown for the README
    print()
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "|".join("---" for _ in HEADERS) + "|")
    for cells in _fmt_rows(rows):
        print("| " + " | ".join(cells) + " |")
    print()
    for line in lines:
        print(f"- {line}")
    details = [r for r in rows if r.singles_detail]
    if details:
        print()
        for r in details:
            print(f"{r.log}: each single model vs the cascade fitted to its quality, held out")
            print()
            print(
                "| model | its quality | its cost | cascade quality | cascade cost / its | beaten |"
            )
            print("|---|---|---|---|---|---|")
            for name, (sq, sc, cq, cc) in sorted(r.singles_detail.items(), key=lambda x: x[1][1]):
                won = "yes" if name in r.beaten else "no"
                print(f"| {name} | {_pct(sq)} | ${sc:.3g} | {_pct(cq)} | {cc / sc:.2f}x | {won} |")
            print()
    if args.show_cascades:
        print()
        for r in rows:
            print(f"{r.log}: " + " || ".join(dict.fromkeys(r.structures)))
    return 0 if not math.isnan(sum(r.quality for r in rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
