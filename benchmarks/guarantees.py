"""Are tiered's quality targets kept? Offline certificates, online bounds, certified labels.

    .venv/bin/python benchmarks/guarantees.py offline [--splits 200] [--logs chains_mmlu ...]
    .venv/bin/python benchmarks/guarantees.py stream [--seeds 20] [--dataset headlines]
    .venv/bin/python benchmarks/guarantees.py labels [--seeds 50] [--target 0.95]

**offline** (every replay log in ``../shared/data/replay``): ``--splits`` random 50/50
splits; each half calibrates, uncertified (the default calibrator, cross-validated; on
the first ``--uncertified-splits`` splits only, it is ten times slower) and certified
(``confidence=0.95``, tolerance 0.005), at ``top``, ``top-0.01``, ``top-0.02`` and
``top*0.95``. The whole log stands for the distribution the half was drawn from: a
*violation* is a chosen cascade whose quality on the whole log is below the target
resolved there (relative targets against the model the calibrator named as top) less
the tolerance. That is what a certificate promises. Relative cost is the cascade's mean
cost over the named top model's, on the whole log. Also shown: the violation frequency
judged on the other half alone (new rows, but a finite sample whose own noise makes
even a perfect cascade "violate" often), and the rows a log would need for the
certificate to allow a cascade at ``top`` (median over splits of the certificate's
estimate; ``-`` when no cheaper cascade looks able to get there).

**stream** (HEADLINES and Rotten Tomatoes, the gold label as the expert): the online
cascade of ``benchmarks/stream.py`` at targets 0.90 and 0.96 over ``--seeds`` seeds, with
the default controller (``control: anytime``) and the earlier ``estimate`` and
``lower_bound`` ones: share of seeds whose true agreement ends below the target, mean
expert calls, and the lowest seed.

**labels** (the same two datasets): a hashed n-gram classifier trained on a disjoint part
is the cheap stage; the gold label is the oracle. Certified batch labelling
(:func:`tiered.calibrate.certify_labels.certify_labels`) against the ``bargain`` package's
``BARGAIN_A`` at the same accuracy target and delta, over ``--seeds`` seeds: oracle calls
and achieved accuracy, and how often the target was missed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tiered.calibrate import Calibration, calibrate
from tiered.calibrate.certify import DEFAULT_FIT_SHARE, CertifySession
from tiered.calibrate.evaluate import evaluate_stages
from tiered.calibrate.objective import Objective
from tiered.replay.load import load_replay
from tiered.replay.view import LogView

ROOT = Path(__file__).resolve().parents[1]
REPLAY = ROOT.parent / "shared" / "data" / "replay"
TARGETS = ("top", "top-0.01", "top-0.02", "top*0.95")
TOLERANCE = 0.005
CONFIDENCE = 0.95


# ----------------------------------------------------------------------------- offline


def _outcome(
    cal: Calibration, full: LogView, other: LogView, target: str
) -> tuple[bool, bool, float]:
    """(violates on the whole log, violates on the other half, relative cost)."""
    q = Objective.make(target).min_quality
    assert q is not None
    top = full.models.index(cal.top_model)
    refs = cal.chosen.config.stage_refs(full.models)
    res = []
    for v in (full, other):
        out = evaluate_stages(v, refs)
        quality = float(np.nan_to_num(out.quality).mean())
        want = q.resolve(float(v.quality[:, top].mean()))
        res.append(quality < want - TOLERANCE - 1e-12)
    cost = float(evaluate_stages(full, refs).cost.mean())
    return res[0], res[1], cost / float(full.cost[:, top].mean())


def _needed(needed: list[float], splits: int) -> str:
    """Median rows needed over the splits that fell back; how many looked unreachable."""
    if not needed:
        return "certified in every split"
    finite = [x for x in needed if math.isfinite(x)]
    unreachable = len(needed) - len(finite)
    med = f"{np.median(finite):,.0f}" if finite else "-"
    return f"{med} ({unreachable}/{splits} unreachable)"


def offline(args: argparse.Namespace) -> None:
    paths = sorted(Path(args.data).glob("*.jsonl"))
    if args.logs:
        paths = [p for p in paths if any(s in p.stem for s in args.logs)]
    header = ["log", "rows"]
    for t in TARGETS:
        header += [f"{t}: viol. uncert / cert", f"{t}: rel. cost uncert / cert"]
    header += ["held-out half viol. at top-0.02 (uncert / cert)", "rows needed at top"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in paths:
        started = time.perf_counter()
        full = LogView.of(load_replay(path))
        rng = np.random.default_rng(args.seed)
        viol = {(t, c): [] for t in TARGETS for c in (0, 1)}
        viol_half = {(t, c): [] for t in TARGETS for c in (0, 1)}
        rel = {(t, c): [] for t in TARGETS for c in (0, 1)}
        needed: list[float] = []
        for split in range(args.splits):
            order = rng.permutation(full.n)
            half, other = full.take(order[: full.n // 2]), full.take(order[full.n // 2 :])
            base = (
                calibrate(half, min_quality="top", seed=split)
                if split < args.uncertified_splits
                else None
            )
            cert = CertifySession(
                half, confidence=CONFIDENCE, tolerance=TOLERANCE, seed=split,
                fit_share=args.fit_share,
            )  # fmt: skip
            for t in TARGETS:
                certified = cert.decide(Objective.make(t))
                cals = [(1, certified)]
                if base is not None:
                    cals.append((0, base if t == "top" else base.with_objective(t)))
                for c, cal in cals:
                    v_full, v_half, r = _outcome(cal, full, other, t)
                    viol[t, c].append(v_full)
                    viol_half[t, c].append(v_half)
                    rel[t, c].append(r)
                got = certified.certificate
                if t == "top" and got is not None and got.rows_needed is not None:
                    needed.append(got.rows_needed)
        cells = [path.stem, f"{full.n:,}"]

        def share(xs: list[bool]) -> str:
            return f"{np.mean(xs):.3f}" if xs else "-"

        def mean(xs: list[float]) -> str:
            return f"{np.mean(xs):.3f}" if xs else "-"

        for t in TARGETS:
            cells.append(f"{share(viol[t, 0])} / {share(viol[t, 1])}")
            cells.append(f"{mean(rel[t, 0])} / {mean(rel[t, 1])}")
        cells.append(f"{share(viol_half['top-0.02', 0])} / {share(viol_half['top-0.02', 1])}")
        cells.append(_needed(needed, args.splits))
        lines.append("| " + " | ".join(cells) + " |")
        print(f"{path.stem}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    off = sub.add_parser("offline", help="certified vs uncertified calibration")
    off.add_argument("--data", type=Path, default=REPLAY)
    off.add_argument("--splits", type=int, default=200)
    off.add_argument("--seed", type=int, default=0)
    off.add_argument("--logs", nargs="*", help="only logs whose name contains one of these")
    off.add_argument("--fit-share", type=float, default=DEFAULT_FIT_SHARE)
    off.add_argument(
        "--uncertified-splits", type=int, default=40,
        help="run the (ten times slower) uncertified calibrator on the first this many splits",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.part == "offline":
        offline(args)


if __name__ == "__main__":
    main()
