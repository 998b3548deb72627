"""``tiered run --certify`` end to end: oracle calls and achieved accuracy on real text.

    .venv/bin/python benchmarks/certify_run.py [--datasets headlines rotten_tomatoes]
        [--targets 0.9 0.95] [--seeds 5] [--learn N ...]

Each dataset is written once as a JSONL file in a temporary folder and labelled by the
same code path as the command line's quick mode (``tiered run IN -o OUT --expert-field
label --expert-cost 0.002 --certify 'accuracy>=T'``): hashed n-grams in front of the gold
label column as the expert. The cheap stage learns on a random sample the expert labels
(``--learn``; default: the command line's, a tenth of the items up to 2,000), then the
rest is certified for the whole dataset (delta = 0.05). Per seed (the run's ``--seed``:
the learning sample, the learning and the certifier's draws): oracle calls (the learning
sample included), the achieved accuracy against the expert over every item, whether it
fell below the target, and wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rows(dataset: str) -> list[tuple[str, str, str]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stream import SHARED, load_headlines, load_rotten_tomatoes, rotten_tomatoes_path

    if dataset == "headlines":
        return load_headlines(SHARED)
    return load_rotten_tomatoes(rotten_tomatoes_path())


def _run(path: Path, out: Path, target: float, seed: int, learn: int | None) -> dict[str, float]:
    from tiered.runner import QuickOptions, make_plan
    from tiered.runner.certified import CertifiedRun, parse_certify

    quick = QuickOptions(expert_field="label", expert_cost=0.002)
    plan = make_plan([str(path)], out, quick=quick, seed=seed, fresh=True)
    t0 = time.perf_counter()
    s = CertifiedRun(plan, parse_certify(f"accuracy>={target}"), learn=learn).run()
    return {
        "items": s.items,
        "learned": s.learned,
        "calls": s.certificate.oracle_calls,
        "acc": float(s.achieved if s.achieved is not None else np.nan),
        "wall": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["headlines", "rotten_tomatoes"])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--learn", type=int, nargs="+", default=[-1], help="-1: the default")
    args = ap.parse_args()
    lines = [
        "| dataset | items | target | learning sample | oracle calls (mean) | accuracy vs "
        "expert (mean, min) | seeds below target | wall s (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            path = Path(tmp) / f"{dataset}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for i, text, label in _rows(dataset):
                    f.write(json.dumps({"id": i, "text": text, "label": label}) + "\n")
            for target in args.targets:
                for learn in args.learn:
                    runs = []
                    for seed in range(args.seeds):
                        r = _run(path, Path(tmp) / "out.jsonl", target, seed,
                                 None if learn < 0 else learn)  # fmt: skip
                        runs.append(r)
                        print(f"{dataset} {target} learn {r['learned']} seed {seed}: "
                              f"{r['calls']} calls, accuracy {r['acc']:.4f}",
                              file=sys.stderr, flush=True)  # fmt: skip
                    n = runs[0]["items"]
                    calls = np.mean([r["calls"] for r in runs])
                    accs = [r["acc"] for r in runs]
                    lines.append(
                        f"| {dataset} | {n:,.0f} | {target} | {runs[0]['learned']:,.0f} "
                        f"| {calls:,.0f} ({calls / n:.1%}) | {np.mean(accs):.4f}, {min(accs):.4f} "
                        f"| {sum(a < target for a in accs)}/{len(accs)} "
                        f"| {np.mean([r['wall'] for r in runs]):.1f} |"
                    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
