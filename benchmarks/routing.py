"""Learned quality estimators and routing on the recorded LLM outputs; markdown tables out.

Sections (``--only`` picks some):

- ``routellm``: RouteLLM's MMLU and GSM8K logs (Mixtral vs GPT-4), split by the md5 of
  the id (odd = test, even = train). Cascade routing is fitted on train for quality >=
  95% of GPT-4's (``top*0.95``) and run through the engine on test; reported as cost
  reduction vs GPT-4 alone, next to RouteLLM's published 45% (MMLU) and 35% (GSM8K),
  random routing and a plain hashed-n-gram logistic-regression router on the query. Two
  readings: *fitted* (λ chosen on train; what a deployment gets) and *CPT(95%)* (the
  cheapest point of the test curve reaching 95%: how RouteLLM reports).
- ``routerbench``: RouterBench's three logs (11 models), 5-fold cross-validation: for
  each single model, the calibrator (confidence rules) and cascade routing are fitted on
  the training folds to reach that model's quality, and pooled over the held-out folds.
- ``chains``: the chain logs at ``--min-quality top``: the calibrator with confidence
  rules only, with the learned scorer added, and cascade routing, each cross-validated;
  the family chosen by CV (:func:`tiered.routing.select.calibrate_with_estimators`).
- ``speed``: fitting every estimator on the 14k-row MMLU log; scoring time per item and
  stage (hashed features) for the ex-ante estimate, the post-hoc scorer and the whole
  cascade-routing step (gate + stop rule).

    .venv/bin/python benchmarks/routing.py [--data DIR] [--only routellm,speed] [--folds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tiered.core.spec import BuildContext, load_cascade
from tiered.io.replay import load_replay
from tiered.io.replay_log import ReplayLog
from tiered.models.replay import Replay, replay_items
from tiered.routing import QualityEstimator, fit_cascade_routing
from tiered.routing.policy import Replayer, Router, fit_lambda

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "replay"
PUBLISHED = {"mmlu": 0.45, "gsm8k": 0.35}  # RouteLLM, cost reduction at 95% of GPT-4


def md5_split(log: ReplayLog) -> tuple[ReplayLog, ReplayLog]:
    odd = np.array([int(hashlib.md5(i.encode()).hexdigest(), 16) % 2 == 1 for i in log.ids])
    return log.subset(~odd), log.subset(odd)


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# -- RouteLLM -------------------------------------------------------------------------------
def cpt(quality: np.ndarray, cost: np.ndarray, need: float, base: float) -> float:
    """Cost reduction of the cheapest curve point whose quality reaches ``need``."""
    ok = quality >= need - 1e-12
    return 1 - float(cost[ok].min()) / base if ok.any() else float("nan")


def ranked_curve(order: np.ndarray, q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Send the first k items of ``order`` to the strong model (k = 0..n), the rest weak."""
    n = len(order)
    dq = np.concatenate([[0.0], np.cumsum(q[order, 1] - q[order, 0])])
    dc = np.concatenate([[0.0], np.cumsum(c[order, 1] - c[order, 0])])
    return (q[:, 0].sum() + dq) / n, (c[:, 0].sum() + dc) / n


def query_lr_router(train: ReplayLog, test: ReplayLog) -> np.ndarray:
    """Plain baseline: hashed word n-grams of the query -> P(the weak model is correct)."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression

    hv = HashingVectorizer(n_features=2**18, ngram_range=(1, 2), alternate_sign=False)
    tr = [it.text for it in replay_items(train)]
    te = [it.text for it in replay_items(test)]
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(hv.transform(tr), train.quality[:, 0] > 0.5)
    return lr.predict_proba(hv.transform(te))[:, 1]


def routellm(data: Path) -> str:
    rows = []
    notes = []
    for task in ("mmlu", "gsm8k"):
        log = load_replay(data / f"routellm_{task}.jsonl")
        train, test = md5_split(log)
        q, c = test.quality, test.cost
        g_q, g_c = float(q[:, 1].mean()), float(c[:, 1].mean())
        need = 0.95 * g_q
        # random routing: expected curve
        p = np.linspace(0, 1, 2001)
        r_q = q[:, 0].mean() + p * (g_q - q[:, 0].mean())
        r_c = c[:, 0].mean() + p * (g_c - c[:, 0].mean())
        lr_p = query_lr_router(train, test)
        lr_q, lr_c = ranked_curve(np.argsort(lr_p), q, c)

        started = time.perf_counter()
        fit = fit_cascade_routing(train, min_quality="top*0.95")
        fit_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = fit.save(Path(tmp) / f"{task}.yaml")
            ctx = BuildContext(base_dir=Path(tmp), resources={"replay_log": test})
            result = load_cascade(path, ctx).run(replay_items(test))
        ours_q, ours_c = result.mean_quality(), result.mean_cost()
        # the test curve of cascade routing over λ (RouteLLM's reading)
        rep = Replayer(fit.estimator, test, fit.heads)
        curve = [rep.run(lam) for lam, *_ in fit.fit.tried]
        cq = np.array([s.mean_quality for s in curve])
        cc = np.array([s.mean_cost for s in curve])
        ran_weak = result.steps[0].indices.size / len(test)
        rows += [
            [task, "GPT-4 only", f"{g_q:.4f}", "100%", f"${g_c:.3g}", "0%", ""],
            [
                task,
                "random routing (CPT 95%)",
                f"{need:.4f}",
                "95%",
                "",
                pct(cpt(r_q, r_c, need, g_c)),
                "",
            ],
            [
                task,
                "query n-gram LR router (CPT 95%)",
                f"{need:.4f}",
                "95%",
                "",
                pct(cpt(lr_q, lr_c, need, g_c)),
                "",
            ],
            [task, "RouteLLM published (CPT 95%)", "", "95%", "", pct(PUBLISHED[task]), ""],
            [
                task,
                "**cascade routing, fitted on train**",
                f"{ours_q:.4f}",
                pct(ours_q / g_q),
                f"${ours_c:.3g}",
                f"**{pct(1 - ours_c / g_c)}**",
                f"Mixtral ran on {pct(ran_weak)}",
            ],
            [
                task,
                "cascade routing (CPT 95% on the test curve)",
                f"{need:.4f}",
                "95%",
                "",
                pct(cpt(cq, cc, need, g_c)),
                "",
            ],
        ]
        notes.append(
            f"{task}: {len(train)} train / {len(test)} test rows; estimator + λ fitted in "
            f"{fit_s:.1f} s (λ = {fit.fit.lam:.4g}/USD, on train: quality {fit.fit.quality:.4f}, "
            f"relative cost {fit.relative_cost:.3f})"
        )
    head = ["task", "method", "test quality", "of GPT-4", "cost/query", "cost reduction", "note"]
    return (
        "### RouteLLM (test half)\n\n"
        + table(head, rows)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
    )


# -- RouterBench ----------------------------------------------------------------------------
def routerbench(data: Path, folds: int, tolerance: float) -> str:
    from tiered.calibrate import calibrate

    out = []
    for path in sorted(data.glob("routerbench_*_train.jsonl")):
        log = load_replay(path)
        n = len(log)
        assign = np.random.default_rng(0).permutation(n) % folds
        started = time.perf_counter()
        runs = []
        for k in range(folds):
            tr, te = log.subset(assign != k), log.subset(assign == k)
            est = QualityEstimator().fit(tr)
            runs.append((tr, te, Replayer(est, tr, tr.models), Replayer(est, te, tr.models)))
        fit_s = time.perf_counter() - started
        sq, sc = log.mean_quality(), log.mean_cost()
        rows = []
        beaten = 0
        for j in np.argsort(sc).tolist():
            # cascade routing, λ per fold for the model's training-fold quality
            rq = rc = 0.0
            for tr, _, rep_tr, rep_te in runs:
                lam = fit_lambda(rep_tr, target=float(tr.quality[:, j].mean())).lam
                sim = rep_te.run(lam)
                rq += float(sim.quality.sum())
                rc += float(sim.cost.sum())
            rq, rc = rq / n, rc / n
            # the calibrator (confidence rules + agreement) for the same target, CV'd
            try:
                cal = calibrate(log, min_quality=float(sq[j]), folds=folds, cv_tolerance=tolerance)
                cv = cal.cv
                kq, kc = (
                    (cv.quality, cv.cost)
                    if cv is not None
                    else (cal.chosen.quality, cal.chosen.cost)
                )
            except Exception as exc:  # a target no cascade reaches
                kq, kc = float("nan"), float("nan")
                print(f"  calibrate {path.stem} @ {sq[j]:.4f}: {exc}", file=sys.stderr)
            cands = [(kc, kq, "calibrator"), (rc, rq, "routing")]
            good = [x for x in cands if x[1] >= sq[j] - tolerance and x[0] < sc[j]]
            best = min(good) if good else None
            beaten += best is not None
            rows.append(
                [
                    log.models[j].split("/")[-1],
                    f"{sq[j]:.3f}",
                    f"${sc[j]:.3g}",
                    f"{kq:.3f} / {kc / sc[j]:.2f}x",
                    f"{rq:.3f} / {rc / sc[j]:.2f}x",
                    f"yes ({best[2]})" if best else "no",
                ]
            )
        head = [
            "model",
            "quality",
            "cost",
            "calibrator CV q / cost",
            "routing CV q / cost",
            "beaten",
        ]
        out.append(
            f"#### {path.stem} ({n} rows, {folds}-fold CV; estimators fitted in {fit_s:.0f} s): "
            f"{beaten}/{log.n_models} single models beaten\n\n" + table(head, rows)
        )
    return (
        "### RouterBench: each single model vs a cascade fitted to its quality (held out)\n\n"
        f"A model is beaten when a method reaches its quality (within {tolerance}) held out at "
        "lower cost; cost is shown relative to that model's.\n\n" + "\n\n".join(out)
    )


# -- chains ---------------------------------------------------------------------------------
def chains(data: Path, folds: int, min_quality: str) -> str:
    from tiered.routing.select import calibrate_with_estimators

    rows = []
    worse = 0
    for path in sorted(data.glob("chains_*_train.jsonl")):
        log = load_replay(path)
        started = time.perf_counter()
        sel = calibrate_with_estimators(log, min_quality=min_quality, folds=folds)
        secs = time.perf_counter() - started
        by = {r.family: r for r in sel.results}

        def cell(name: str, by: dict = by) -> str:
            r = by.get(name)
            if r is None:
                return "-"
            return f"{r.relative_cost:.3f} (q {r.quality:.3f}){'' if r.meets else ' ✗'}"

        conf = by.get("confidence")
        win = sel.winner
        if conf is not None and conf.meets and win.relative_cost > conf.relative_cost + 1e-9:
            worse += 1
        rows.append(
            [
                path.stem.removeprefix("chains_").removesuffix("_train"),
                f"{win.top_quality:.3f}",
                cell("confidence"),
                cell("scorer"),
                cell("routing"),
                f"**{win.family}** {win.relative_cost:.3f}",
                f"{secs:.0f}",
            ]
        )
    head = ["log", "top q (CV)", "confidence only", "+ scorer", "cascade routing", "chosen", "s"]
    return (
        f"### Chain logs at --min-quality {min_quality}: relative cost held out "
        f"({folds}-fold CV)\n\n"
        + table(head, rows)
        + f"\n\nChosen family worse than confidence-only on {worse} of {len(rows)} logs "
        "(✗: misses the target held out)."
    )


# -- speed ----------------------------------------------------------------------------------
def speed(data: Path) -> str:
    rows = []
    log = load_replay(data / "routellm_mmlu.jsonl")
    started = time.perf_counter()
    QualityEstimator().fit(log)
    fit_full = time.perf_counter() - started
    rows.append(
        [
            "routellm_mmlu",
            f"fit every estimator ({len(log):,} rows, 2 models)",
            f"{fit_full:.1f} s",
            "",
        ]
    )
    for name in ("routellm_mmlu", "routellm_gsm8k", "routerbench_arc_challenge_train"):
        log = load_replay(data / f"{name}.jsonl")
        train, test = md5_split(log)
        est = QualityEstimator().fit(train)
        heads = list(test.models)
        router = Router(est, heads, lam=1.0 / float(test.cost[:, -1].mean()))
        answers = [Replay(test, h).predict(replay_items(test)) for h in heads]
        k = len(heads)

        def fresh(test: ReplayLog = test) -> list:
            return replay_items(test)  # new items: no cached features

        items = fresh()
        t0 = time.perf_counter()
        est.exante(items)
        exante_us = (time.perf_counter() - t0) / len(items) * 1e6
        t0 = time.perf_counter()
        for j, h in enumerate(heads[:-1]):
            est.posthoc(items, h, answers[j])
        post_us = (time.perf_counter() - t0) / len(items) / max(k - 1, 1) * 1e6
        items = fresh()
        t0 = time.perf_counter()
        for j in range(k - 1):
            router.admit(items, j)
            router.accept(items, j, answers[j], {heads[i]: answers[i].labels for i in range(j)})
        route_us = (time.perf_counter() - t0) / len(items) / max(k - 1, 1) * 1e6
        one = fresh()[:1]
        t0 = time.perf_counter()
        for _ in range(20):
            router.admit(one, 0)
            one[0].cache.clear()
        single_ms = (time.perf_counter() - t0) / 20 * 1e3
        rows.append(
            [
                name,
                f"score {len(items):,} items x {k - 1} routed stages",
                f"{route_us:.0f} µs/item/stage",
                f"ex-ante {exante_us:.0f} µs/item (once, all models); post-hoc "
                f"{post_us:.0f} µs/item/stage; one item alone {single_ms:.1f} ms",
            ]
        )
    return "### Speed\n\n" + table(["log", "what", "time", "detail"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of replay logs")
    ap.add_argument("--only", default="routellm,routerbench,chains,speed")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--min-quality", default="top")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data folder {args.data}", file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.only.split(",")}
    started = time.perf_counter()
    print("## tiered routing benchmark (machine shared; timings are indicative)\n")
    for name, fn in (
        ("routellm", lambda: routellm(args.data)),
        ("routerbench", lambda: routerbench(args.data, args.folds, args.tolerance)),
        ("chains", lambda: chains(args.data, args.folds, args.min_quality)),
        ("speed", lambda: speed(args.data)),
    ):
        if name in parts:
            t0 = time.perf_counter()
            print(fn())
            print(f"\n_{name}: {time.perf_counter() - t0:.0f} s_\n", flush=True)
    print(f"_total {time.perf_counter() - started:.0f} s_")
    return 0


if __name__ == "__main__":
    sys.exit(main())
