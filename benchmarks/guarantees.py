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
resolved there (relative targets against the whole log's best model; a certificate's
fallback, which claims only to be the best model of its half, against itself) less the
tolerance. That is what a certificate promises. Relative cost is the cascade's mean
cost over the whole log's best model's. Also shown: the violation frequency
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
    """(violates on the whole log, violates on the other half, relative cost).

    A relative target is judged against the whole log's best model (what ``top`` means),
    except a certificate's fallback, which claims only to be the best model of the half it
    saw and is judged against itself. Cost is relative to the whole log's best model."""
    q = Objective.make(target).min_quality
    assert q is not None
    best = full.top()[0]
    fallback = cal.certificate is not None and cal.certificate.fallback
    top = full.models.index(cal.top_model) if fallback else best
    refs = cal.chosen.config.stage_refs(full.models)
    res = []
    for v in (full, other):
        out = evaluate_stages(v, refs)
        quality = float(np.nan_to_num(out.quality).mean())
        want = q.resolve(float(v.quality[:, top].mean()))
        res.append(quality < want - TOLERANCE - 1e-12)
    cost = float(evaluate_stages(full, refs).cost.mean())
    return res[0], res[1], cost / float(full.cost[:, best].mean())


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
        viol: dict[tuple[str, int], list[bool]] = {(t, c): [] for t in TARGETS for c in (0, 1)}
        viol_half: dict[tuple[str, int], list[bool]] = {k: [] for k in viol}
        rel: dict[tuple[str, int], list[float]] = {k: [] for k in viol}
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


# ----------------------------------------------------------------------------- stream

CONTROLS = ("lower_bound", "estimate", "anytime")  # lower_bound first: the ratio column


def _run_stream(rows: list[tuple[str, str, str]], cfg: object, seed: int) -> dict[str, float]:
    """One stream through the online cascade of ``benchmarks/stream.py`` (hashed n-grams in
    front of the gold label as the expert): expert calls, true agreement, the final bounds."""
    from stream import expert_stage, hashed_stages, make_items
    from tiered.online import OnlineCascade

    items = make_items(rows)
    oc = OnlineCascade(hashed_stages(), expert_stage(), cfg, seed=seed)  # type: ignore[arg-type]
    out = []
    for i in range(0, len(items), 256):
        out.extend(oc.process(items[i : i + 256]))
    st = oc.stats()
    right = [d.label == it.fields["label"] for d, it in zip(out, items, strict=True)]
    truth = float(np.mean(right))
    return {
        "calls": st.expert_share,
        "truth": truth,
        "cs_low": st.cs_low,
        "ci_low": st.ci_low,
        "alarms": float(st.alarms),
    }


def stream(args: argparse.Namespace) -> None:
    from tiered.online import OnlineConfig

    lines = [
        "| dataset | target | control | seeds below target | expert calls (mean) "
        "| vs lower_bound | true agreement (mean, min) | final bound: sequence / interval "
        "| seeds with an alarm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets:
        rows = _text_rows(dataset)
        for target in args.targets:
            calls: dict[str, float] = {}
            for control in args.controls:
                cfg = OnlineConfig(target_agreement=target, control=control)
                runs = []
                for seed in range(args.seeds):
                    runs.append(_run_stream(rows, cfg, seed))
                    r = runs[-1]
                    print(f"{dataset} {target} {control} seed {seed}: calls {r['calls']:.4f} "
                          f"true {r['truth']:.4f} cs_low {r['cs_low']:.4f}",
                          file=sys.stderr, flush=True)  # fmt: skip
                calls[control] = float(np.mean([r["calls"] for r in runs]))
                truth = [r["truth"] for r in runs]
                base = calls.get("lower_bound")
                lines.append(
                    f"| {dataset} | {target} | {control} "
                    f"| {sum(t < target for t in truth)}/{len(runs)} | {calls[control]:.1%} "
                    f"| {'-' if base is None else f'{calls[control] / base:.2f}'} "
                    f"| {np.mean(truth):.4f}, {min(truth):.4f} "
                    f"| {np.mean([r['cs_low'] for r in runs]):.4f} / "
                    f"{np.mean([r['ci_low'] for r in runs]):.4f} "
                    f"| {sum(r['alarms'] > 0 for r in runs)} |"
                )
    print("\n".join(lines))


# ----------------------------------------------------------------------------- labels


def _text_rows(dataset: str) -> list[tuple[str, str, str]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stream import SHARED, load_headlines, load_rotten_tomatoes, rotten_tomatoes_path

    if dataset == "headlines":
        return load_headlines(SHARED)
    return load_rotten_tomatoes(rotten_tomatoes_path())


def _proxy(rows: list[tuple[str, str, str]], n_train: int) -> tuple[np.ndarray, ...]:
    """The cheap stage: a hashed n-gram classifier trained on ``n_train`` random rows (three
    passes), then labelling the rest. Returns (labels, scores, gold) of the rest."""
    from tiered.core import Item
    from tiered.models.hashed_ngram import HashedNgramModel

    idx = np.random.default_rng(0).permutation(len(rows))
    train, rest = [rows[i] for i in idx[:n_train]], [rows[i] for i in idx[n_train:]]
    model = HashedNgramModel()
    items = [Item(id=i, input=t) for i, t, _ in train]
    for _ in range(3):
        for j in range(0, len(items), 256):
            model.learn(items[j : j + 256], [y for _, _, y in train[j : j + 256]])
    out = model.predict([Item(id=i, input=t) for i, t, _ in rest])
    assert out.probs is not None
    labels = np.array(out.labels, dtype=object)
    gold = np.array([y for _, _, y in rest], dtype=object)
    return labels, out.probs.max(axis=1), gold


def _bargain(labels: np.ndarray, scores: np.ndarray, gold: np.ndarray, target: float,
             delta: float, seed: int) -> tuple[int, float]:  # fmt: skip
    """BARGAIN_A with the same cheap labels, scores and oracle (the gold column)."""
    from BARGAIN import BARGAIN_A, Oracle, Proxy

    class _P(Proxy):  # type: ignore[misc]
        def proxy_func(self, record: str) -> tuple[str, float]:
            i = int(record)
            return str(labels[i]), float(scores[i])

    class _O(Oracle):  # type: ignore[misc]
        def oracle_func(self, record: str, proxy_output: object) -> tuple[bool, str]:
            truth = str(gold[int(record)])
            return proxy_output == truth, truth

    algo = BARGAIN_A(_P(verbose=False, max_workers=1), _O(verbose=False, max_workers=1),
                     target=target, delta=delta, seed=seed, verbose=False)  # fmt: skip
    out, used = algo.process([str(i) for i in range(len(labels))], return_oracle_usage=True)
    return int(np.sum(used)), float(np.mean(np.array(out, dtype=object) == gold))


def labels(args: argparse.Namespace) -> None:
    from tiered.calibrate.certify_labels import certify_labels

    lines = [
        "| dataset | items | cheap accuracy | target | system | oracle calls (mean) "
        "| accuracy (mean, min) | seeds below target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets:
        cheap, scores, gold = _proxy(_text_rows(dataset), args.train)
        n = len(gold)
        for target in args.targets:
            got: dict[str, list[tuple[int, float]]] = {"tiered": [], "BARGAIN_A": []}

            def oracle(i: np.ndarray, g: np.ndarray = gold) -> list[str]:
                return [str(x) for x in g[i]]

            for seed in range(args.seeds):
                res = certify_labels(
                    cheap, scores, oracle, target=target, confidence=1 - args.delta, seed=seed
                )
                acc = float(np.mean(np.array(res.labels, dtype=object) == gold))
                got["tiered"].append((res.oracle_calls, acc))
                if not args.no_bargain:
                    got["BARGAIN_A"].append(_bargain(cheap, scores, gold, target, args.delta, seed))
                print(f"{dataset} {target} seed {seed}: " + ", ".join(
                    f"{k} {v[-1][0]} calls acc {v[-1][1]:.4f}" for k, v in got.items() if v
                ), file=sys.stderr, flush=True)  # fmt: skip
            for system, runs in got.items():
                if not runs:
                    continue
                calls = [c for c, _ in runs]
                accs = [a for _, a in runs]
                lines.append(
                    f"| {dataset} | {n:,} | {np.mean(cheap == gold):.3f} | {target} | {system} "
                    f"| {np.mean(calls):,.0f} ({np.mean(calls) / n:.1%}) "
                    f"| {np.mean(accs):.4f}, {min(accs):.4f} "
                    f"| {sum(a < target for a in accs)}/{len(accs)} |"
                )
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
    st = sub.add_parser("stream", help="online controllers: seeds below target, expert calls")
    st.add_argument("--datasets", nargs="+", default=["headlines", "rotten_tomatoes"])
    st.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.96])
    st.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=CONTROLS)
    st.add_argument("--seeds", type=int, default=20)
    lab = sub.add_parser("labels", help="certified batch labelling vs BARGAIN")
    lab.add_argument("--datasets", nargs="+", default=["headlines", "rotten_tomatoes"])
    lab.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    lab.add_argument("--delta", type=float, default=0.05)
    lab.add_argument("--seeds", type=int, default=50)
    lab.add_argument("--train", type=int, default=2000, help="rows that train the cheap stage")
    lab.add_argument("--no-bargain", action="store_true")
    args = ap.parse_args(argv)
    if args.part == "offline":
        offline(args)
    elif args.part == "stream":
        stream(args)
    elif args.part == "labels":
        labels(args)


if __name__ == "__main__":
    main()
