"""Behaviour of the cheap learnable stages and of the label-column expert."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

from tiered.checks import toy_items
from tiered.core import Cascade, Item, Stage, Threshold, load_cascade
from tiered.core.spec import build_model
from tiered.errors import ConfigError, StoreError
from tiered.models._linear import LinearParams, OnlineLinear
from tiered.models.embedding import EmbeddingClassifier, EmbeddingModel, Encoder, load_encoder
from tiered.models.hashed_ngram import (
    DocumentFrequencies,
    HashedNgramClassifier,
    HashedNgramModel,
    NgramHasher,
)
from tiered.models.label_column import LabelColumn
from tiered.store.state import encode_state

SMALL = 2**16  # features: plenty for toy data, and quick to allocate


def _labels(items: list[Item]) -> list[str]:
    return [it.fields["label"] for it in items]


def _p_true(model: HashedNgramModel | EmbeddingModel, items: list[Item]) -> float:
    a = model.predict(items)
    assert a.probs is not None and a.classes is not None
    cols = [a.classes.index(y) for y in _labels(items)]
    return float(a.probs[np.arange(len(items)), cols].mean())


# ------------------------------------------------------------------ hasher
def test_hasher_counts_word_and_character_ngrams() -> None:
    h = NgramHasher(n_features=2**20, word_ngram_range=(1, 2), char_ngram_range=(2, 5))
    X = h.transform(["ab cd", "AB", ""])
    # "ab cd": chars of " ab " and " cd ": 3+2+1 each (n=2..4; no 5-gram) = 12,
    # words: ab, cd, "ab cd" = 3
    assert np.diff(X.indptr).tolist() == [15, 7, 0]
    row = X[0].toarray().ravel()
    assert math.isclose(row.sum(), 15 / math.sqrt(15))  # entries of 1/sqrt(#n-grams)
    # lowercased: "AB" is "ab", whose n-grams are all in "ab cd"
    assert set(X[1].indices) <= set(X[0].indices)


def test_hasher_rows_do_not_depend_on_the_batch() -> None:
    h = NgramHasher(n_features=SMALL)
    texts = [it.text for it in toy_items(40)] + ["Gold’s rally — 2.5% ☃ naïve", "a\tb\nc  d"]
    together = h.transform(texts).toarray()
    for i, t in enumerate(texts):
        assert np.array_equal(h.transform([t]).toarray()[0], together[i])
    assert np.array_equal(NgramHasher(n_features=SMALL).transform(texts).toarray(), together)
    chunked = h.transform(texts * 120)  # over the 4096-text chunk
    assert np.array_equal(chunked[-len(texts) :].toarray(), together)


def test_hasher_separates_words_and_handles_odd_text() -> None:
    h = NgramHasher(n_features=2**20, char_ngram_range=(0, 0))  # words only
    X = h.transform(["gold rises", "rises gold", "\ud800 lone surrogate", "   "])
    assert X.shape == (4, 2**20)
    a, b = (set(X[i].indices) for i in (0, 1))
    assert len(a & b) == 2  # same words, different bigram
    assert np.diff(X.indptr)[3] == 0


# ---------------------------------------------------------- hashed classifier
def test_hashed_model_learns_and_its_confidence_rises() -> None:
    model = HashedNgramModel(n_features=SMALL)
    test = toy_items(60, seed=99)
    first = toy_items(6, seed=1)
    model.learn(first, _labels(first))
    early = _p_true(model, test)
    for seed in range(2, 12):
        batch = toy_items(30, seed=seed)
        model.learn(batch, _labels(batch))
    late = _p_true(model, test)
    assert late > early + 0.2
    answers = model.predict(test)
    accuracy = np.mean([a == y for a, y in zip(answers.labels, _labels(test), strict=True)])
    assert accuracy >= 0.95
    assert set(model.classes) == {"sports", "markets", "weather"}


def test_new_label_mid_stream_is_learned_and_known_labels_stay() -> None:
    model = HashedNgramModel(n_features=SMALL)
    for seed in range(5):
        batch = toy_items(30, seed=seed, classes=("sports", "markets"))
        model.learn(batch, _labels(batch))
    before = model.classes
    assert before == ("sports", "markets")
    for seed in range(5, 12):
        batch = toy_items(30, seed=seed, classes=("sports", "markets", "weather"))
        model.learn(batch, _labels(batch))
    assert model.classes == ("sports", "markets", "weather")
    test = toy_items(60, seed=99)
    labels = model.predict(test).labels
    accuracy = np.mean([a == y for a, y in zip(labels, _labels(test), strict=True)])
    assert accuracy >= 0.9


def test_labels_seen_before_a_second_class_are_not_lost() -> None:
    clf = HashedNgramClassifier(n_features=SMALL)
    assert clf.predict_proba(["x", "y"]).shape == (2, 0)
    assert clf.predict(["x"]).tolist() == [None]
    clf.partial_fit(["rain storm flood"] * 5, ["weather"] * 5)
    assert clf.predict_proba(["anything"]).tolist() == [[1.0]]
    clf.partial_fit(["goal team match"], ["sports"])  # the held rows are learned now
    p = clf.predict_proba(["rain storm flood", "goal team match"])
    assert clf.classes_ == ("weather", "sports")
    assert p[0, 0] > 0.5 and p[1, 1] > 0.5


def test_rows_held_for_a_single_class_are_bounded() -> None:
    clf = HashedNgramClassifier(n_features=SMALL, max_pending=50)
    for _ in range(10):
        clf.partial_fit(["same class"] * 20, ["a"] * 20)
    state = clf.linear_.state_dict()
    assert sum(len(y) for y in state["pending_y"]) == 50


def test_declared_classes_keep_their_order_and_start_uniform() -> None:
    model = HashedNgramModel(n_features=SMALL, classes=("up", "down", "flat"))
    a = model.predict(toy_items(3))
    assert a.classes == ("up", "down", "flat")
    assert np.allclose(a.probs, 1 / 3)
    assert a.labels == [None, None, None]  # nothing learned: no answer, always passed on
    model.learn([Item("1", "gold up"), Item("2", "gold down")], ["down", "up"])
    assert model.predict(toy_items(3)).classes == ("up", "down", "flat")


def test_untrained_stage_defers_everything_in_a_cascade() -> None:
    cheap = HashedNgramModel(n_features=SMALL)
    cascade = Cascade(
        [
            Stage("cheap", cheap, rule=Threshold(signal="max_prob", threshold=0.5)),
            Stage("expert", LabelColumn("label", usd_per_call=0.01)),
        ]
    )
    items = toy_items(10)
    result = cascade.run(items)
    assert result.stage_share() == {"cheap": 0.0, "expert": 1.0}
    assert result.labels == _labels(items)
    cheap.learn(items, result.labels)
    assert cascade.run(toy_items(10, seed=5)).stage_share()["cheap"] > 0


def test_learn_skips_none_labels_and_checks_lengths() -> None:
    model = HashedNgramModel(n_features=SMALL)
    items = toy_items(4)
    model.learn(items, [None, None, None, None])
    assert model.classifier.n_seen_ == 0
    model.learn(items, ["a", None, "b", None])
    assert model.classifier.n_seen_ == 2 and model.classes == ("a", "b")
    with pytest.raises(ValueError, match="4 items and 3 labels"):
        model.learn(items, ["a", "b", "c"])


def test_features_are_hashed_once_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = NgramHasher.row_indices

    def counting(self: NgramHasher, texts: list[str]) -> list[np.ndarray]:
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(NgramHasher, "row_indices", counting)
    model = HashedNgramModel(n_features=SMALL)
    items = toy_items(20)
    model.predict(items)
    model.learn(items, _labels(items))
    model.predict(items[:5] + toy_items(3, seed=9))
    assert calls == [20, 3]
    # cached rows give exactly what hashing again would
    fresh = HashedNgramModel(n_features=SMALL, cache_features=False)
    fresh.learn(toy_items(20), _labels(items))
    assert np.array_equal(fresh.predict(toy_items(8)).probs, model.predict(toy_items(8)).probs)


def test_state_dict_is_compact_and_refuses_another_hashing() -> None:
    model = HashedNgramModel()  # 2**20 features
    items = toy_items(30)
    model.learn(items, _labels(items))
    blob = encode_state(model.state_dict())
    assert len(blob) < 1_000_000  # only the weights in use, not 3 x 2**20 floats
    with pytest.raises(StoreError, match="checkpoint of model 'hashed_ngram'"):
        HashedNgramModel(n_features=SMALL).load_state_dict(model.state_dict())


def test_idf_weighs_rare_ngrams_up_and_keeps_rows_unit_length() -> None:
    h = NgramHasher(n_features=SMALL, word_ngram_range=(1, 1), char_ngram_range=(0, 0))
    df = DocumentFrequencies(SMALL)
    plain = h.transform(["gold rises"])
    assert (df.weigh(plain) != plain).nnz == 0  # nothing counted yet: rows stay plain
    df.count(h.transform(["gold rises", "gold falls", "gold gold gold"]))
    assert df.n_docs == 3
    gold, rises = h.transform(["gold"]).indices[0], h.transform(["rises"]).indices[0]
    assert df.df[gold] == 3  # a word repeated in one text counts once for it
    row = df.weigh(plain)
    weight = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
    assert weight[rises] > weight[gold]  # the rarer word weighs more
    assert float((row.data**2).sum()) == pytest.approx(1.0)


def test_relearned_items_count_once_and_state_keeps_the_counts() -> None:
    model = HashedNgramModel(n_features=SMALL)
    items = toy_items(40)
    for _ in range(3):  # an online cascade replays labelled items
        model.learn(items, _labels(items))
    frequencies = model.classifier.df_
    assert frequencies is not None and frequencies.n_docs == 40
    fresh = HashedNgramModel(n_features=SMALL)
    fresh.load_state_dict(model.state_dict())
    assert fresh.classifier.df_ is not None and fresh.classifier.df_.n_docs == 40
    probe = toy_items(10, seed=1)
    assert np.array_equal(model.predict(probe).probs, fresh.predict(probe).probs)
    plain = HashedNgramModel(n_features=SMALL, idf=False)
    with pytest.raises(StoreError, match="idf=True"):
        plain.load_state_dict(model.state_dict())


def test_lazy_l2_matches_sklearn_penalised_sgd() -> None:
    # a noisy linear problem; our batched L2 must track sklearn's per-sample L2
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 3))
    X = rng.normal(size=(3000, 20))
    y = np.array(["a", "b", "c"])[(X @ w + rng.gumbel(size=(3000, 3))).argmax(axis=1)]
    ours = OnlineLinear(20, LinearParams(alpha=1e-2), classes=("a", "b", "c"))
    ref = SGDClassifier(loss="log_loss", alpha=1e-2, random_state=0)
    for s in range(0, 3000, 50):
        ours.partial_fit(X[s : s + 50], y[s : s + 50].tolist())
        ref.partial_fit(X[s : s + 50], y[s : s + 50], classes=["a", "b", "c"])
    assert ours.coef is not None
    mine = (ours.coef * ours.scale).T
    cos = (mine * ref.coef_).sum(axis=1) / np.linalg.norm(mine, axis=1)
    cos /= np.linalg.norm(ref.coef_, axis=1)
    assert cos.min() > 0.98
    assert np.allclose(np.linalg.norm(mine, axis=1), np.linalg.norm(ref.coef_, axis=1), rtol=0.1)
    agree = (ours.predict_proba(X).argmax(axis=1) == ref.predict_proba(X).argmax(axis=1)).mean()
    assert agree > 0.97


def test_sklearn_style_fit_and_clone() -> None:
    from sklearn.base import clone

    items = toy_items(60)
    clf = HashedNgramClassifier(n_features=SMALL, seed=3).fit(
        [i.text for i in items], _labels(items)
    )
    assert clf.score([i.text for i in toy_items(30, seed=7)], _labels(toy_items(30, seed=7))) > 0.9
    fresh = clone(clf)
    assert fresh.get_params()["seed"] == 3 and fresh.n_seen_ == 0


# ------------------------------------------------------------- label column
def test_label_column_answers_from_the_field() -> None:
    col = LabelColumn("gold", usd_per_call=0.002)
    items = [
        Item("1", "t", {"gold": "up"}),
        Item("2", "t", {"gold": "  down "}),
        Item("3", "t", {}),
        Item("4", "t", {"gold": ""}),
        Item("5", "t", {"gold": float("nan")}),
        Item("6", "t", {"gold": None}),
        Item("7", "t", {"gold": 1}),
    ]
    a = col.predict(items)
    assert a.labels == ["up", "down", None, None, None, None, "1"]
    assert np.allclose(a.cost, 0.002)  # every call is paid for, answered or not
    assert col.tags.gives_probabilities is False and col.tags.learns_online is False


# ---------------------------------------------------------- specs and errors
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"kind": "hashed_ngram", "alpha": -1},
            "The 'alpha' parameter of model 'hashed_ngram' must be a float > 0. Got -1 instead.",
        ),
        (
            {"kind": "hashed_ngram", "char_ngram_range": [5, 2]},
            "The 'char_ngram_range' parameter of model 'hashed_ngram' must be a pair [lo, hi] "
            "of ints with 0 <= lo <= hi (0 turns chars off). Got [5, 2] instead.",
        ),
        (
            {"kind": "hashed_ngram", "learning_rate": "fast"},
            "The 'learning_rate' parameter of model 'hashed_ngram' must be one of 'optimal', "
            "'constant', 'invscaling'. Got 'fast' instead.",
        ),
        (
            {"kind": "hashed_ngram", "alhpa": 1},
            "Model 'hashed_ngram' has no parameter 'alhpa'; its parameters: alpha,",
        ),
        (
            {"kind": "label_column", "usd_per_call": "cheap"},
            "The 'usd_per_call' parameter of model 'label_column' must be a float >= 0 (USD). "
            "Got 'cheap' instead.",
        ),
        (
            {"kind": "minilm", "num_threads": 0},
            "The 'num_threads' parameter of model 'minilm' must be an int in [1, 256]. "
            "Got 0 instead.",
        ),
    ],
)
def test_bad_parameters_are_named(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(spec)
    assert message in str(err.value)
    bad = next(k for k in spec if k != "kind")
    assert err.value.field == f"model.{bad}"


def test_cascade_file_builds_the_stages_and_names_bad_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "stages:\n"
        "  - name: cheap\n"
        "    model: {kind: hashed_ngram, n_features: 65536, classes: [up, down]}\n"
        "    rule: {kind: threshold, signal: max_prob, threshold: 0.9}\n"
        "  - name: expert\n"
        "    model: {kind: label_column, field: gold, usd_per_call: 0.002}\n"
    )
    cascade = load_cascade(path)
    assert isinstance(cascade.stages[0].model, HashedNgramModel)
    assert cascade.stages[0].model.classes == ("up", "down")
    path.write_text(path.read_text().replace("n_features: 65536", "n_features: 3"))
    with pytest.raises(ConfigError, match=r"field 'stages\.0\.model\.n_features': The 'n_featu"):
        load_cascade(path)


# ---------------------------------------------------------------- embeddings
def test_embedding_classifier_takes_precomputed_embeddings() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2, 384))
    y = rng.integers(0, 2, 200)
    E = centers[y] + 0.3 * rng.normal(size=(200, 384))
    labels = np.array(["neg", "pos"])[y].tolist()
    clf = EmbeddingClassifier(classes=("pos", "neg")).partial_fit(E[:150], labels[:150])
    assert clf.classes_ == ("pos", "neg")
    assert (clf.predict(E[150:]) == np.array(labels[150:], dtype=object)).mean() > 0.95


PARAPHRASE_TRAIN = [
    ("I am so happy today", "joy"),
    ("what a wonderful, delightful surprise", "joy"),
    ("this is the best news ever, I love it", "joy"),
    ("we are thrilled and overjoyed", "joy"),
    ("I feel miserable and down", "sadness"),
    ("this is heartbreaking, I want to cry", "sadness"),
    ("such a gloomy, depressing day", "sadness"),
    ("we are devastated by the loss", "sadness"),
]
PARAPHRASE_TEST = [
    ("she was beaming with delight", "joy"),
    ("fantastic! everything went great", "joy"),
    ("he felt glad and cheerful", "joy"),
    ("tears ran down my face all night", "sadness"),
    ("I am grieving and lonely", "sadness"),
    ("everything feels hopeless and bleak", "sadness"),
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder()  # one load for the module (and the session: encoders are shared)


def test_embedding_model_generalises_to_paraphrases(encoder: Encoder) -> None:
    model = EmbeddingModel(alpha=1e-3)
    train = [Item(str(i), t, {"label": y}) for i, (t, y) in enumerate(PARAPHRASE_TRAIN)]
    test = [Item(f"t{i}", t, {"label": y}) for i, (t, y) in enumerate(PARAPHRASE_TEST)]
    for _ in range(10):  # a few passes over eight examples
        model.learn(train, _labels(train))
    labels = model.predict(test).labels
    assert np.mean([a == y for a, y in zip(labels, _labels(test), strict=True)]) >= 5 / 6
    E = model.embed(test)
    assert E.shape == (6, 384) and np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-4)
    joy, sad = E[:3], E[3:]
    assert (joy @ joy.T).mean() > (joy @ sad.T).mean()
    assert "HF_HUB_OFFLINE" in os.environ  # set (unless the user set it) before loading


def test_embeddings_are_computed_once_per_item_and_text(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = Encoder.encode

    def counting(self: object, texts: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(len(texts))
        return original(self, texts, batch_size)  # type: ignore[arg-type]

    monkeypatch.setattr(Encoder, "encode", counting)
    model = EmbeddingModel(cache_size=2)
    items = [Item("1", "gold rises"), Item("2", "gold rises"), Item("3", "gold falls")]
    first = model.predict(items)
    assert calls == [2]  # the repeated text is encoded once
    model.learn(items, ["up", "up", "down"])  # from item.cache
    assert calls == [2]
    model.predict([Item("4", "gold rises")])  # another item, a text in the LRU
    assert calls == [2] and len(model._lru) == 2
    model.predict([Item("5", "silver"), Item("6", "copper"), Item("7", "tin")])
    assert len(model._lru) == 2  # bounded
    assert first.latency_ms.shape == (3,) and (first.latency_ms >= 0).all()
