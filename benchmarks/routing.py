"""Learned quality estimators and routing on the recorded LLM outputs; markdown tables out.

Sections (``--only`` picks some):

- ``routellm``: RouteLLM's MMLU and GSM8K logs (Mixtral vs GPT-4), split by the md5 of
  the id (odd = test, even = train). Cascade routing is fitted on train for quality >=
  95% of GPT-4's (``top*0.95``) and run through the engine on test; reported as cost
  reduction vs GPT-4 alone, next to RouteLLM's published 45% (MMLU) and 35% (GSM8K),
  random routing and a plain hashed-n-gram logistic-regression router on the query. Two
  readings: *fitted* (λ chosen on train; what a deployment gets) and *CPT(95%)* (the
  cheapest point of the test curve reaching 95%: how RouteLLM reports).
- ``routerbench``: RouterBench's three logs (11 models), 5-fold outer cross-validation:
  for each single model, the calibrator (confidence and agreement rules, with its own inner
  CV) and cascade routing are fitted on the training folds to reach that model's
  training-fold quality, and scored on the held-out fold, pooled. (Before, the calibrator's
  column was its inner-CV estimate on the whole log: the best of many structures scored on
  the folds that chose it, so optimistic.)
- ``chains``: the chain logs at ``--min-quality top``: the calibrator with confidence
  rules only, with the learned scorer added, and cascade routing, each cross-validated;
  the family chosen by CV (:func:`tiered.calibrate.learned.select.calibrate_with_estimators`). Those
  are the selection's own inner-CV numbers; ``--outer`` also scores the whole selection on
  outer held-out folds against confidence-only calibration (slow: ``--logs`` picks some).
- ``speed``: fitting every estimator on the 14k-row MMLU log; scoring time per item and
  stage (hashed features) for the ex-ante estimate, the post-hoc scorer and the whole
  cascade-routing step (gate + stop rule).

    .venv/bin/python benchmarks/routing.py [--data DIR] [--only routellm,speed] [--folds 5]
        [--outer] [--logs mmlu_llama,medmcqa_qwen]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tiered.calibrate.auto import calibrate_log
from tiered.calibrate.learned import QualityEstimator, fit_cascade_routing
from tiered.calibrate.learned.policy import Replayer, Router, fit_lambda
from tiered.core.spec import BuildContext, load_cascade
from tiered.replay.load import load_replay
from tiered.replay.log import ReplayLog
from tiered.replay.model import Replay, replay_items

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "replay"
COST_TOLERANCE = 0.01  # a single model is beaten only by a cascade at least 1% cheaper
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
        # what a user gets with no flags: ``tiered calibrate train --min-quality top*0.95``
        started = time.perf_counter()
        rec = calibrate_log(train, min_quality="top*0.95")
        plain_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = rec.save(Path(tmp) / f"{task}-plain.yaml")
            ctx = BuildContext(base_dir=Path(tmp), resources={"replay_log": test})
            plain = load_cascade(path, ctx).run(replay_items(test))
        plain_q, plain_c = plain.mean_quality(), plain.mean_cost()
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
                "**`tiered calibrate --min-quality top*0.95` (no flags)**",
                f"{plain_q:.4f}",
                pct(plain_q / g_q),
                f"${plain_c:.3g}",
                f"**{pct(1 - plain_c / g_c)}**",
                f"family {rec.family}, {plain_s:.0f} s",
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
def _held_out(spec: object, test: ReplayLog) -> tuple[float, float]:
    """Summed quality and cost of a cascade file replayed on ``test`` by the engine."""
    from tiered.eval import evaluate_cascade

    cascade = spec.build(BuildContext(resources={"replay_log": test}))  # type: ignore[attr-defined]
    result, _ = evaluate_cascade(cascade, test)
    return float(result.mean_quality()) * len(test), float(result.mean_cost()) * len(test)


def routerbench(data: Path, folds: int, tolerance: float) -> str:
    """Outer ``folds``-fold CV: everything (estimator, λ, the calibrator's search and its own
    inner CV) is fitted on the training folds and scored on the held-out fold, pooled.

    Earlier versions reported the calibrator's *inner* cross-validation estimate of the
    structure it selected: that number picked the best of many structures on the same
    folds, so it was optimistic. Both methods are now scored on rows they never saw.
    """
    from tiered.calibrate import calibrate

    out = []
    for path in sorted(data.glob("routerbench_*_train.jsonl")):
        log = load_replay(path)
        n, m = len(log), log.n_models
        assign = np.random.default_rng(0).permutation(n) % folds
        started = time.perf_counter()
        rq, rc = np.zeros(m), np.zeros(m)  # routing, summed over held-out rows
        kq, kc = np.zeros(m), np.zeros(m)  # calibrator
        for k in range(folds):
            tr, te = log.subset(assign != k), log.subset(assign == k)
            est = QualityEstimator().fit(tr)
            rep_tr, rep_te = Replayer(est, tr, tr.models), Replayer(est, te, tr.models)
            cal = calibrate(tr, min_quality="top", folds=folds, cv_tolerance=tolerance)
            for j in range(m):
                target = float(tr.quality[:, j].mean())  # the model's training-fold quality
                sim = rep_te.run(fit_lambda(rep_tr, target=target).lam)
                rq[j] += float(sim.quality.sum())
                rc[j] += float(sim.cost.sum())
                q, c = _held_out(cal.with_objective(min_quality=target).spec, te)
                kq[j] += q
                kc[j] += c
        fit_s = time.perf_counter() - started
        sq, sc = log.mean_quality(), log.mean_cost()
        rq, rc, kq, kc = rq / n, rc / n, kq / n, kc / n
        rows = []
        beaten = {"calibrator": 0, "routing": 0}
        cheapest = int(np.argmin(sc))
        for j in np.argsort(sc).tolist():
            marks = []
            for name, q, c in (("calibrator", kq[j], kc[j]), ("routing", rq[j], rc[j])):
                if q >= sq[j] - tolerance and c < (1 - COST_TOLERANCE) * sc[j]:
                    beaten[name] += 1
                    marks.append(name)
            note = " (cheapest: nothing costs less)" if j == cheapest else ""
            rows.append(
                [
                    log.models[j].split("/")[-1],
                    f"{sq[j]:.3f}",
                    f"${sc[j]:.3g}",
                    f"{kq[j]:.3f} / {kc[j] / sc[j]:.2f}x",
                    f"{rq[j]:.3f} / {rc[j] / sc[j]:.2f}x",
                    (", ".join(marks) if marks else "no") + note,
                ]
            )
        head = ["model", "quality", "cost", "calibrator q / cost", "routing q / cost", "beaten by"]
        out.append(
            f"#### {path.stem} ({n} rows, {folds}-fold outer CV, {fit_s:.0f} s): single models "
            f"beaten by the calibrator {beaten['calibrator']}/{m}, by cascade routing "
            f"{beaten['routing']}/{m}\n\n" + table(head, rows)
        )
    return (
        "### RouterBench: each single model vs a cascade fitted to its quality (held out)\n\n"
        f"A model is beaten by a method when, pooled over the held-out folds, the method "
        f"fitted (on the training folds) to that model's training-fold quality reaches the "
        f"model's quality minus {tolerance} (absolute) at a mean cost at least "
        f"{100 * COST_TOLERANCE:.0f}% lower. The cheapest model cannot be beaten (every cascade "
        "pays at least one model); cost is shown relative to the model's own.\n\n"
        + "\n\n".join(out)
    )


# -- chains ---------------------------------------------------------------------------------
def _chains_outer(log: ReplayLog, folds: int, min_quality: str) -> dict[str, float]:
    """Outer CV of the whole selection: fit on the training folds, score the held-out fold.

    Returns pooled held-out quality and cost of the chosen family and of confidence-only
    calibration (the same training folds), and how often each family won.
    """
    from tiered.calibrate import calibrate
    from tiered.calibrate.learned.select import calibrate_with_estimators

    n = len(log)
    assign = np.random.default_rng(1).permutation(n) % folds
    got = {"q": 0.0, "c": 0.0, "conf_q": 0.0, "conf_c": 0.0, "top_q": 0.0, "top_c": 0.0}
    wins: dict[str, int] = {}
    for k in range(folds):
        tr, te = log.subset(assign != k), log.subset(assign == k)
        sel = calibrate_with_estimators(tr, min_quality=min_quality, folds=folds)
        wins[sel.winner.family] = wins.get(sel.winner.family, 0) + 1
        q, c = _held_out(sel.spec, te)
        got["q"] += q
        got["c"] += c
        conf = calibrate(tr, min_quality=min_quality, folds=folds)
        q, c = _held_out(conf.spec, te)
        got["conf_q"] += q
        got["conf_c"] += c
        tq, tc = tr.mean_quality(), tr.mean_cost()
        top = int(np.flatnonzero(tq >= tq.max() - 1e-12)[np.argmin(tc[tq >= tq.max() - 1e-12])])
        got["top_q"] += float(te.quality[:, top].sum())
        got["top_c"] += float(te.cost[:, top].sum())
    out = {k: v / n for k, v in got.items()}
    out["wins"] = wins  # type: ignore[assignment]
    return out


def chains(data: Path, folds: int, min_quality: str, outer: bool, logs: str) -> str:
    from tiered.calibrate.learned.select import calibrate_with_estimators

    rows = []
    worse = 0
    outer_rows = []
    for path in sorted(data.glob("chains_*_train.jsonl")):
        if logs and not any(x in path.name for x in logs.split(",")):
            continue
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
        short = path.stem.removeprefix("chains_").removesuffix("_train")
        rows.append(
            [
                short,
                f"{win.top_quality:.3f}",
                cell("confidence"),
                cell("scorer"),
                cell("routing"),
                f"**{win.family}** {win.relative_cost:.3f}",
                f"{secs:.0f}",
            ]
        )
        if outer:
            o = _chains_outer(log, folds, min_quality)
            outer_rows.append(
                [
                    short,
                    f"{o['top_q']:.3f}",
                    f"{o['conf_q']:.3f} / {o['conf_c'] / o['top_c']:.3f}",
                    f"{o['q']:.3f} / {o['c'] / o['top_c']:.3f}",
                    ", ".join(f"{k} {v}" for k, v in sorted(o["wins"].items())),  # type: ignore[attr-defined]
                ]
            )
    head = ["log", "top q (CV)", "confidence only", "+ scorer", "cascade routing", "chosen", "s"]
    text = (
        f"### Chain logs at --min-quality {min_quality}: relative cost, inner CV "
        f"({folds}-fold)\n\n"
        "These are the selection's own cross-validation estimates (the numbers it chooses "
        "by, so the winner's are optimistic); `--outer` adds a held-out check.\n\n"
        + table(head, rows)
        + f"\n\nChosen family worse than confidence-only (inner CV) on {worse} of {len(rows)} "
        "logs (✗: misses the target in inner CV)."
    )
    if outer_rows:
        text += (
            f"\n\n#### Held out ({folds}-fold outer CV; everything refit on the training "
            "folds)\n\n"
            + table(
                [
                    "log",
                    "training-fold top, held-out q",
                    "confidence only q / rel. cost",
                    "chosen family q / rel. cost",
                    "families chosen",
                ],
                outer_rows,
            )
        )
    return text


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
    started = time.perf_counter()
    rec = calibrate_log(log, min_quality="top*0.95")
    rows.append(
        [
            "routellm_mmlu",
            f"`tiered calibrate` with no flags ({len(log):,} rows; goal <= 2 min)",
            f"{time.perf_counter() - started:.0f} s",
            f"family {rec.family}: {rec.why}",
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
    ap.add_argument(
        "--outer", action="store_true", help="chains: also an outer CV of the selection (slow)"
    )
    ap.add_argument("--logs", default="", help="chains: only logs whose name contains one of these")
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
        ("chains", lambda: chains(args.data, args.folds, args.min_quality, args.outer, args.logs)),
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
