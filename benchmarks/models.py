"""Throughput of the cheap stages on HEADLINES (short news headlines, 4 labels).

    .venv/bin/python benchmarks/models.py [--data DIR] [--embed-n 512] [--threads 1,2]

Prints items/s for the hashed n-gram stage (hashing alone, predict, learn from the
rows cached by predict, learn from cold items), for the static embedding stage (MiniLM
distilled by model2vec: encoding alone, predict, learn) and the hashed + static stage,
and for the MiniLM embedding stage (predict = encode + classify, learn from the cached
embeddings), with the test accuracy each reaches after one online pass over the
training file. Each figure is the best of
``--repeat`` runs, on fresh items (no cached features) unless said otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from tiered.core import Item
from tiered.models.embedding import EmbeddingModel, load_encoder
from tiered.models.hashed_ngram import HashedNgramModel, NgramHasher
from tiered.models.hashed_static import HashedStaticModel
from tiered.models.static_embedding import StaticEmbeddingModel, load_static_encoder

T = TypeVar("T")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"


def read(path: Path) -> list[Item]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return [Item(id=r["id"], input=r["text"], fields={"label": r["label"]}) for r in rows]


def fresh(items: list[Item]) -> list[Item]:
    """Copies without the cached features of earlier runs."""
    return [Item(id=it.id, input=it.input, fields=it.fields) for it in items]


def batches(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def best_rate(n: int, run: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return n / min(times)


LinearStage = HashedNgramModel | EmbeddingModel | StaticEmbeddingModel


def accuracy(model: LinearStage, items: list[Item]) -> float:
    labels = model.predict(items).labels
    return float(np.mean([a == it.fields["label"] for a, it in zip(labels, items, strict=True)]))


def bench_hashed(train: list[Item], test: list[Item], repeat: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    texts = [it.text for it in test]
    hasher = NgramHasher()
    for size in (256, 1000):

        def hash_all(s: int = size) -> None:
            for b in batches(texts, s):
                hasher.transform(b)

        rate = best_rate(len(texts), hash_all, repeat)
        rows.append(("hashed_ngram", "hash texts (no model)", str(size), f"{rate:,.0f}", ""))

    # reference: the two scikit-learn HashingVectorizers NgramHasher stands in for
    from sklearn.feature_extraction.text import HashingVectorizer

    word = HashingVectorizer(n_features=2**20, ngram_range=(1, 2))
    char = HashingVectorizer(n_features=2**20, analyzer="char_wb", ngram_range=(2, 5))

    def sklearn_hash() -> None:
        for b in batches(texts, 1000):
            word.transform(b) + char.transform(b)

    rate = best_rate(len(texts), sklearn_hash, repeat)
    rows.append(("reference", "sklearn HashingVectorizer x2", "1000", f"{rate:,.0f}", ""))

    learner = HashedNgramModel()
    t0 = time.perf_counter()
    for b in batches(train, 100):  # one online pass, as a stream would give it
        learner.learn(b, [it.fields["label"] for it in b])
    one_pass = len(train) / (time.perf_counter() - t0)
    acc = accuracy(learner, fresh(test))
    rows.append(
        ("hashed_ngram", "learn, one pass (cold items)", "100", f"{one_pass:,.0f}", f"{acc:.3f}")
    )

    for size in (64, 256, 1000):

        def predict(s: int = size) -> None:
            for b in batches(fresh(test), s):
                learner.predict(b)

        rate = best_rate(len(test), predict, repeat)
        rows.append(("hashed_ngram", "predict (trained, 4 classes)", str(size), f"{rate:,.0f}", ""))

    for size in (64, 256):
        cached = fresh(train)
        for b in batches(cached, 1000):
            learner.predict(b)  # as in a cascade: the stage saw the items first

        def learn_cached(s: int = size, items: list[Item] = cached) -> None:
            model = HashedNgramModel()
            for b in batches(items, s):
                model.learn(b, [it.fields["label"] for it in b])

        rate = best_rate(len(train), learn_cached, repeat)
        rows.append(
            ("hashed_ngram", "learn (rows cached by predict)", str(size), f"{rate:,.0f}", "")
        )

    def predict_then_learn() -> None:
        model = HashedNgramModel()
        for b in batches(fresh(train), 256):
            model.predict(b)
            model.learn(b, [it.fields["label"] for it in b])

    rate = best_rate(len(train), predict_then_learn, repeat)
    rows.append(("hashed_ngram", "predict + learn every item", "256", f"{rate:,.0f}", ""))
    return rows


def bench_static(train: list[Item], test: list[Item], repeat: int) -> list[tuple[str, ...]]:
    """The static embedding (MiniLM distilled to 256 dims) alone and beside the n-grams."""
    rows: list[tuple[str, ...]] = []
    t0 = time.perf_counter()
    encoder = load_static_encoder()  # distils MiniLM on first use (cached after)
    load_s = time.perf_counter() - t0
    texts = [it.text for it in test]
    for size in (256, 1000):

        def encode(s: int = size) -> None:
            for b in batches(texts, s):
                encoder.encode(b)

        rate = best_rate(len(texts), encode, repeat)
        rows.append(("static_embedding", "encode texts (no model)", str(size), f"{rate:,.0f}", ""))
        c0 = time.process_time()  # CPU time: steadier than wall time on a shared machine
        encode()
        cpu_rate = len(texts) / max(time.process_time() - c0, 1e-9)
        rows.append(
            ("static_embedding", "encode, per CPU second", str(size), f"{cpu_rate:,.0f}", "")
        )
    rows.append(("static_embedding", f"load table: {load_s:.1f} s", "", "", ""))

    stages: list[tuple[str, Callable[[], LinearStage]]] = [
        ("static_embedding", StaticEmbeddingModel),
        ("static_embedding lbfgs", lambda: StaticEmbeddingModel(solver="lbfgs")),
        ("hashed_static", HashedStaticModel),
    ]
    for name, make in stages:
        learner = make()
        t0 = time.perf_counter()
        for b in batches(fresh(train), 100):  # one online pass, as a stream would give it
            learner.learn(b, [it.fields["label"] for it in b])
        one_pass = len(train) / (time.perf_counter() - t0)
        acc = accuracy(learner, fresh(test))
        rows.append((name, "learn, one pass (cold items)", "100", f"{one_pass:,.0f}", f"{acc:.3f}"))

        def predict(m: LinearStage = learner) -> None:
            for b in batches(fresh(test), 256):
                m.predict(b)

        rate = best_rate(len(test), predict, repeat)
        rows.append((name, "predict (trained, 4 classes)", "256", f"{rate:,.0f}", ""))

        def predict_then_learn(make: Callable[[], LinearStage] = make) -> None:
            model = make()
            for b in batches(fresh(train), 256):
                model.predict(b)
                model.learn(b, [it.fields["label"] for it in b])

        rate = best_rate(len(train), predict_then_learn, repeat)
        rows.append((name, "predict + learn every item", "256", f"{rate:,.0f}", ""))
    return rows


def bench_embedding(
    train: list[Item], test: list[Item], n: int, threads: list[int], repeat: int
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    train, test = train[:n], test[:n]
    for k in threads:
        t0 = time.perf_counter()
        load_encoder(num_threads=k)
        load_s = time.perf_counter() - t0
        model = EmbeddingModel(num_threads=k, cache_size=0)  # no LRU: measure encoding
        for size in (64, 256):

            def predict(s: int = size, m: EmbeddingModel = model) -> None:
                for b in batches(fresh(test), s):
                    m.predict(b)

            rate = best_rate(len(test), predict, repeat)
            rows.append(
                (
                    f"embedding ({k} thr)",
                    "predict (encode + classify)",
                    str(size),
                    f"{rate:,.1f}",
                    "",
                )
            )
        rows.append((f"embedding ({k} thr)", f"load model: {load_s:.1f} s", "", "", ""))
    model = EmbeddingModel(num_threads=threads[0])
    cached = fresh(train)
    for b in batches(cached, 256):
        model.predict(b)  # embeddings now in item.cache

    def learn_cached() -> None:
        m = EmbeddingModel(num_threads=threads[0])
        for b in batches(cached, 100):
            m.learn(b, [it.fields["label"] for it in b])

    rate = best_rate(len(cached), learn_cached, repeat)
    for b in batches(cached, 100):
        model.learn(b, [it.fields["label"] for it in b])
    acc = accuracy(model, fresh(test))
    rows.append(
        (f"embedding ({threads[0]} thr)", "learn (embeddings cached)", "100", f"{rate:,.0f}", "")
    )
    rows.append(
        (f"embedding ({threads[0]} thr)", f"one pass over {n} train items", "", "", f"{acc:.3f}")
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="folder with headlines_*.jsonl")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--embed-n", type=int, default=512, help="items for the embedding stage")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to try")
    ap.add_argument("--skip-embedding", action="store_true", help="skip the MiniLM stage")
    ap.add_argument("--skip-static", action="store_true", help="skip the static embedding")
    args = ap.parse_args()

    train = read(args.data / "headlines_train.jsonl")
    test = read(args.data / "headlines_test.jsonl")
    mean_len = statistics.mean(len(it.text) for it in test)
    print(f"HEADLINES: {len(train)} train / {len(test)} test, mean {mean_len:.0f} chars")
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f} (shared machine)\n")

    rows = bench_hashed(train, test, args.repeat)
    if not args.skip_static:
        rows += bench_static(train, test, args.repeat)
    if not args.skip_embedding:
        threads = [int(x) for x in args.threads.split(",")]
        rows += bench_embedding(train, test, args.embed_n, threads, args.repeat)

    head = ("stage", "operation", "batch", "items/s", "test acc")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))


if __name__ == "__main__":
    main()
