"""Offline calibration on recorded LLM outputs, cross-validated, against two baselines.

For every replay log in the folder (default ``../shared/data/replay``, chain and RouterBench
logs; ``*_test.jsonl`` left out), k-fold cross-validation (``--repeats`` new fold draws,
pooled): each method is fitted on k-1 folds and scored on the held-out fold.

Methods, each scored the same way:

- **tiered**: what ``tiered calibrate`` does by default (its own inner cross-validation,
  learned families where the log's confidence signals are weak), one fit per target;
- **grid**: the plain baseline, one threshold per stage grid-searched over every
  sub-cascade (:mod:`tiered.calibrate.grid`), the cheapest point meeting the target;
- **hindsight**: the same grid fitted on the evaluation fold itself (the ceiling: it knows
  the answers it is scored on).

Reported per log:

- operating points at ``--min-quality`` ``top``, ``top-0.01`` and ``top*0.95``: held-out
  relative cost (cascade cost / the best single model's) and Δ quality in points against
  the best single model of the whole log, with the standard error of Δ from the finite
  number of queries (paired, per query);
- the grid's held-out cost at tiered's held-out quality (``grid @ q``: the grid's operating
  points over a sweep of targets, pooled, cheapest reaching that quality), so "tiered
  costs more than the grid at equal quality" shows;
- certified calibration (``certify(confidence=0.95)``, Learn then Test) at ``top-0.01`` and
  ``top-0.02``, held out the same way (``--no-certified`` leaves it out);
- the normalised area under the held-out error–cost curve (Zellinger & Thomson: the mean
  error over the cost range all three curves cover; :mod:`tiered.calibrate.curve`).
  Tiered's curve is its frontier fitted on the training folds, the grid's its Pareto
  set, both replayed on the held-out fold and averaged over folds; the hindsight curve is
  the grid fitted on all held-out rows (every row, pooled) and scored on them.

Then the issue's targets (printed with MET / NOT MET), and the time to calibrate a
synthetic 5-model, 1,500-row log.

    .venv/bin/python benchmarks/replay.py [--data DIR] [--pattern 'chains_*'] [--folds 5]
        [--repeats 1] [--learned auto|never]
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

from tiered.calibrate.curve import ErrorCostCurve, shared_range
from tiered.calibrate.evaluate import evaluate_stages
from tiered.calibrate.grid import choose_grid, grid_frontier, grid_outcome
from tiered.calibrate.objective import parse_min_quality
from tiered.core.spec import BuildContext, CascadeSpec
from tiered.eval import evaluate_cascade
from tiered.replay.load import load_replay
from tiered.replay.synthetic import make_synthetic_log, write_jsonl
from tiered.replay.view import LogView

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "replay"
TARGETS = ("top", "top-0.01", "top*0.95")
# the grid's operating points for "grid @ q": targets top + 0.02 down to top - 0.10
SWEEP = tuple(round(x, 4) for x in np.arange(-0.02, 0.1001, 0.005))
METHODS = ("tiered", "grid", "hindsight")
CERTIFIED = ("top-0.01", "top-0.02")  # certified calibration (Learn then Test), 95% confidence


@dataclass
class Pooled:
    """Held-out sums of one method at one target (over folds and repeats)."""

    n: int = 0
    cost: float = 0.0
    quality: float = 0.0

    def add(self, cost: np.ndarray, quality: np.ndarray) -> None:
        self.n += len(cost)
        self.cost += float(cost.sum())
        self.quality += float(quality.sum())

    @property
    def mean(self) -> tuple[float, float]:
        return self.cost / max(self.n, 1), self.quality / max(self.n, 1)


@dataclass
class LogResult:
    log: str
    n: int
    models: int
    top: str
    top_quality: float
    top_cost: float
    ops: dict[tuple[str, str], Pooled] = field(default_factory=dict)  # (method, target)
    sweep: dict[float, Pooled] = field(default_factory=dict)  # the grid's, by δ below top
    delta_se: float = math.nan
    area: dict[str, float] = field(default_factory=dict)
    families: dict[str, int] = field(default_factory=dict)  # tiered's winning families
    chosen: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rel(self, method: str, target: str) -> float:
        return self.ops[(method, target)].mean[0] / self.top_cost

    def delta(self, method: str, target: str) -> float:
        return 100 * (self.ops[(method, target)].mean[1] - self.top_quality)

    def grid_cost_at(self, quality: float) -> float:
        """The grid's cheapest pooled held-out operating point reaching ``quality``
        (relative cost; inf when none does)."""
        got = [p.mean[0] for p in self.sweep.values() if p.mean[1] >= quality - 1e-12]
        return min(got) / self.top_cost if got else math.inf


@dataclass
class TieredFit:
    """Tiered's fit on the training folds: a cascade file per target, and its frontier."""

    specs: dict[str, CascadeSpec]
    frontier: list[object]  # search configs (replayed with the vectorised evaluator)
    family: str
    text: str  # the cascade chosen at the first target


def fit_tiered(train: LogView, args: argparse.Namespace, seed: int) -> TieredFit:
    """What ``tiered calibrate`` does by default, for every target of the table."""
    from tiered.calibrate.auto import calibrate_log

    got = calibrate_log(
        train, min_quality=TARGETS[0], folds=args.inner_folds, seed=seed, learned=args.learned
    )
    specs = {TARGETS[0]: got.spec}
    for t in TARGETS[1:]:
        specs[t] = got.with_objective(min_quality=t).spec
    text = got.calibration.chosen.text() if got.family == "confidence" else got.family
    return TieredFit(specs, [p.config for p in got.calibration.frontier], got.family, text)


def _engine(spec: CascadeSpec, test: LogView) -> tuple[np.ndarray, np.ndarray]:
    """Per-query cost and quality of a cascade file run by the engine on ``test``'s rows."""
    log = test.log.subset(test.rows)
    cascade = spec.build(BuildContext(resources={"replay_log": log}))
    result, _ = evaluate_cascade(cascade, log)
    return np.asarray(result.cost, dtype=float), np.asarray(result.quality, dtype=float)


def _curve(points: list[tuple[np.ndarray, np.ndarray]]) -> ErrorCostCurve:
    return ErrorCostCurve.of([c.mean() for c, _ in points], [q.mean() for _, q in points])


def run_log(path: Path, args: argparse.Namespace, rejects: Path) -> LogResult:
    started = time.perf_counter()
    log = load_replay(path, skip_bad=True, reject_path=rejects / f"{path.stem}.rejects.jsonl")
    view = LogView.of(log)
    top, top_q, top_c = view.top()
    res = LogResult(path.stem.removesuffix("_train"), view.n, view.m, view.models[top], top_q,
                    top_c)  # fmt: skip
    for m in METHODS:
        for t in TARGETS:
            res.ops[(m, t)] = Pooled()
    for t in CERTIFIED:
        res.ops[("certified", t)] = Pooled()
    res.sweep = {d: Pooled() for d in SWEEP}
    per_row = np.zeros(view.n)  # tiered's held-out quality at top, averaged over repeats
    fold_curves: dict[str, list[ErrorCostCurve]] = {"tiered": [], "grid": []}
    rng = np.random.default_rng(args.seed)
    for r in range(args.repeats):
        assign = rng.permutation(view.n) % args.folds
        for k in range(args.folds):
            train, test = view.take(assign != k), view.take(assign == k)
            train_top = train.top()[1]
            fit = fit_tiered(train, args, seed=args.seed + 7 * r + k)
            res.families[fit.family] = res.families.get(fit.family, 0) + 1
            for t in TARGETS:
                c, q = _engine(fit.specs[t], test)
                res.ops[("tiered", t)].add(c, q)
                if t == TARGETS[0]:
                    per_row[assign == k] += q / args.repeats
            res.chosen.append(fit.text)
            fold_curves["tiered"].append(_curve([_replay(test, cfg) for cfg in fit.frontier]))
            grid = grid_frontier(train)
            for t in TARGETS:
                pick = choose_grid(grid, parse_min_quality(t).resolve(train_top))
                res.ops[("grid", t)].add(*grid_outcome(test, pick))
            for d in SWEEP:
                res.sweep[d].add(*grid_outcome(test, choose_grid(grid, train_top - d)))
            fold_curves["grid"].append(_curve([grid_outcome(test, p) for p in grid]))
            if args.certified:
                from tiered.calibrate import certify

                for t in CERTIFIED:
                    cert = certify(train, t, confidence=0.95, seed=args.seed + k)
                    res.ops[("certified", t)].add(*_engine(cert.spec, test))
            hind = grid_frontier(test)
            for t in TARGETS:
                pick = choose_grid(hind, parse_min_quality(t).resolve(test.top()[1]))
                res.ops[("hindsight", t)].add(*grid_outcome(test, pick))
    full = grid_frontier(view)  # hindsight on every held-out row, pooled
    hind_curve = ErrorCostCurve.of([p.cost for p in full], [p.quality for p in full])
    curves = [c for cs in fold_curves.values() for c in cs]
    lo, hi = shared_range([*curves, hind_curve])
    for name, cs in fold_curves.items():
        res.area[name] = float(np.mean([c.mean_error(lo, hi) for c in cs]))
    res.area["hindsight"] = hind_curve.mean_error(lo, hi)
    diff = per_row - view.quality[:, top]
    res.delta_se = 100 * float(np.std(diff)) / math.sqrt(view.n)
    res.seconds = time.perf_counter() - started
    return res


def _replay(test: LogView, config: object) -> tuple[np.ndarray, np.ndarray]:
    out = evaluate_stages(test, config.stage_refs(test.models))  # type: ignore[attr-defined]
    return out.cost, out.quality


# -- tables ---------------------------------------------------------------------------------
def op_rows(rows: list[LogResult]) -> tuple[list[str], list[list[str]]]:
    head = ["log", "best single model", "its quality"]
    for t in TARGETS:
        head.append(f"tiered {t}: rel. cost / Δ pts")
    head += ["grid top", "hindsight top", "grid @ tiered's q (top)"]
    head += [f"certified {t}" for t in CERTIFIED if rows and rows[0].ops[("certified", t)].n]
    head += ["Δ SE", "families", "s"]
    out = []
    for r in rows:
        cells = [r.log, r.top, f"{100 * r.top_quality:.1f}%"]
        for t in TARGETS:
            cells.append(f"{r.rel('tiered', t):.3f} / {r.delta('tiered', t):+.1f}")
        g = r.grid_cost_at(r.ops[("tiered", "top")].mean[1])
        cells += [
            f"{r.rel('grid', 'top'):.3f} / {r.delta('grid', 'top'):+.1f}",
            f"{r.rel('hindsight', 'top'):.3f} / {r.delta('hindsight', 'top'):+.1f}",
            "unreached" if math.isinf(g) else f"{g:.3f}",
            *(
                f"{r.rel('certified', t):.3f} / {r.delta('certified', t):+.1f}"
                for t in CERTIFIED
                if r.ops[("certified", t)].n
            ),
            f"{r.delta_se:.1f}",
            ", ".join(f"{k} {v}" for k, v in sorted(r.families.items())),
            f"{r.seconds:.0f}",
        ]
        out.append(cells)
    return head, out


def area_rows(rows: list[LogResult]) -> tuple[list[str], list[list[str]]]:
    head = ["log", "tiered", "grid", "hindsight", "tiered vs hindsight", "grid vs hindsight"]
    out = []
    for r in rows:
        a = r.area
        out.append([
            r.log, f"{a['tiered']:.4f}", f"{a['grid']:.4f}", f"{a['hindsight']:.4f}",
            f"{100 * (a['tiered'] / a['hindsight'] - 1):+.1f}%",
            f"{100 * (a['grid'] / a['hindsight'] - 1):+.1f}%",
        ])  # fmt: skip
    return head, out


def targets(rows: list[LogResult]) -> list[str]:
    """The issue's Done-when figures, with MET / NOT MET."""
    lines = []
    judged = [r for r in rows if r.log.startswith(("chains_", "routerbench_"))]
    if judged:
        rel = float(np.mean([r.rel("tiered", "top") for r in judged]))
        mean_d = float(np.mean([r.delta("tiered", "top") for r in judged]))
        worst = min(judged, key=lambda r: r.delta("tiered", "top"))
        costlier = [
            r.log for r in judged
            if r.rel("tiered", "top") > 1.01 * r.grid_cost_at(r.ops[("tiered", "top")].mean[1])
        ]  # fmt: skip
        ok = rel <= 0.70 and mean_d >= -0.5 and worst.delta("tiered", "top") >= -2 and not costlier
        lines.append(
            f"top, {len(judged)} logs: mean relative cost {rel:.3f} (target <= 0.70), mean Δ "
            f"{mean_d:+.2f} pts (>= -0.5), worst {worst.delta('tiered', 'top'):+.1f} "
            f"({worst.log}; >= -2), costlier than the grid at equal held-out quality on "
            f"{len(costlier)} ({', '.join(costlier) or 'none'}): {'MET' if ok else 'NOT MET'}"
        )
        for t in TARGETS[1:]:
            lines.append(
                f"{t}: mean relative cost {np.mean([r.rel('tiered', t) for r in judged]):.3f}, "
                f"mean Δ {np.mean([r.delta('tiered', t) for r in judged]):+.2f} pts; grid "
                f"{np.mean([r.rel('grid', t) for r in judged]):.3f} / "
                f"{np.mean([r.delta('grid', t) for r in judged]):+.2f}"
            )
        for t in CERTIFIED:
            if judged[0].ops[("certified", t)].n:
                lines.append(
                    f"certified (95%) {t}: mean relative cost "
                    f"{np.mean([r.rel('certified', t) for r in judged]):.3f}, mean Δ "
                    f"{np.mean([r.delta('certified', t) for r in judged]):+.2f} pts"
                )
        lines.append(
            f"grid at top: mean relative cost {np.mean([r.rel('grid', 'top') for r in judged]):.3f}"
            f", mean Δ {np.mean([r.delta('grid', 'top') for r in judged]):+.2f}; hindsight "
            f"{np.mean([r.rel('hindsight', 'top') for r in judged]):.3f} / "
            f"{np.mean([r.delta('hindsight', 'top') for r in judged]):+.2f}"
        )
    chains = [r for r in rows if r.log.startswith("chains_") and math.isfinite(r.area["tiered"])]
    if chains:
        gap = float(np.mean([r.area["tiered"] / r.area["hindsight"] - 1 for r in chains]))
        ggap = float(np.mean([r.area["grid"] / r.area["hindsight"] - 1 for r in chains]))
        below = sum(r.area["tiered"] < r.area["grid"] for r in chains)
        ok = gap <= 0.03 and below >= 8
        lines.append(
            f"error–cost area, {len(chains)} chain logs: tiered {100 * gap:+.1f}% above the "
            f"hindsight ceiling on average (target <= +3%; grid {100 * ggap:+.1f}%), below the "
            f"grid on {below}/{len(chains)} (target >= 8): {'MET' if ok else 'NOT MET'}"
        )
    return lines


def time_synthetic(n: int = 1500) -> float:
    """Seconds to calibrate (5-fold CV included) a synthetic 5-model log of ``n`` rows."""
    from tiered.calibrate import calibrate

    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(make_synthetic_log(n, seed=7), Path(tmp) / "synthetic_5x1500.jsonl")
        log = load_replay(path)
        t = time.perf_counter()
        calibrate(log, min_quality="top")
        return time.perf_counter() - t


def markdown(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of replay logs")
    ap.add_argument("--pattern", default="*.jsonl", help="which logs (glob)")
    ap.add_argument("--exclude", default="_test.jsonl$|^routellm_", help="regex of logs to skip")
    ap.add_argument("--folds", type=int, default=5, help="outer folds")
    ap.add_argument("--inner-folds", type=int, default=5, help="the calibrator's own folds")
    ap.add_argument("--repeats", type=int, default=1, help="new outer fold draws (pooled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--learned",
        default="auto",
        choices=("auto", "never", "always"),
        help="learned rule families: as tiered calibrate decides, never, always",
    )
    ap.add_argument("--no-timing", action="store_true", help="skip the 5x1,500 timing run")
    ap.add_argument(
        "--no-certified", dest="certified", action="store_false", help="skip certified points"
    )
    ap.add_argument("--show-cascades", action="store_true", help="print tiered's cascades")
    args = ap.parse_args(argv)

    logs = sorted(p for p in args.data.glob(args.pattern) if not re.search(args.exclude, p.name))
    if not logs:
        print(f"no logs matching {args.pattern} in {args.data}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in logs:
            print(f"{path.name} ...", end=" ", file=sys.stderr, flush=True)
            rows.append(run_log(path, args, Path(tmp)))
            print(f"{rows[-1].seconds:.0f} s", file=sys.stderr, flush=True)
    split = f"{args.folds}-fold CV" + (f" x{args.repeats}" if args.repeats > 1 else "")
    print(f"### Operating points, held out ({split}; rel. cost / Δ pts vs the best single model)\n")
    print(markdown(*op_rows(rows)))
    print(
        "\n### Normalised area under the held-out error–cost curve (mean error; lower is better)\n"
    )
    print(markdown(*area_rows(rows)))
    print()
    for line in targets(rows):
        print(f"- {line}")
    if not args.no_timing:
        print(f"- calibration of a 5-model, 1,500-row log (synthetic, 5-fold CV included): "
              f"{time_synthetic():.1f} s (target < 30 s)")  # fmt: skip
    if args.show_cascades:
        for r in rows:
            print(f"\n{r.log}: " + " || ".join(dict.fromkeys(r.chosen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
