"""The static embedding stage and the hashed + static stage, on toy static models.

One slow test distils the real MiniLM (from its PyPI package) into a temporary cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiered.core import Item
from tiered.core.spec import build_model
from tiered.errors import ConfigError, StoreError
from tiered.models import static_embedding as se
from tiered.models.hashed_ngram import HashedNgramModel
from tiered.models.hashed_static import HashedStaticModel
from tiered.models.static_embedding import (
    StaticEmbeddingModel,
    build_toy_static_model,
    load_static_encoder,
)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return build_toy_static_model(tmp_path / "toy", dim=8, seed=1)


def _items(texts: list[str], labels: list[str] | None = None) -> list[Item]:
    labels = labels or [""] * len(texts)
    return [
        Item(id=f"i{i}", input=t, fields={"label": y})
        for i, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]


def _plain(value: Any, where: str = "state") -> None:
    """Checkpoint state is plain data: no object a store would have to pickle."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where}: key {k!r}"
            _plain(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]")
    else:
        ok = value is None or isinstance(value, str | int | float | bool | np.ndarray | np.generic)
        assert ok, f"{where} is a {type(value).__name__}"
        if isinstance(value, np.ndarray):
            assert value.dtype != object, f"{where} is an object array"


# ------------------------------------------------------------------ encoder
def test_a_text_is_the_unit_mean_of_its_token_vectors(toy: Path) -> None:
    enc = load_static_encoder(toy)
    ids = enc.tokenizer.encode("Gold rises", add_special_tokens=False).ids
    assert len(ids) == 2  # "gold" and "rises" are whole tokens of the toy vocabulary
    want = enc.vectors[ids].mean(axis=0)
    got = enc.encode(["Gold rises"])[0]
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-6)


def test_rows_do_not_depend_on_the_batch_and_are_unit_length(toy: Path) -> None:
    enc = load_static_encoder(toy)
    texts = ["the gold price", "down down", "qwxz film 42", "a"]
    together = enc.encode(texts)
    alone = np.vstack([enc.encode([t]) for t in texts])
    assert np.array_equal(together, alone)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-6)


def test_texts_without_known_tokens_embed_as_zeros(toy: Path) -> None:
    enc = load_static_encoder(toy)
    out = enc.encode(["", "€€ ¥", "gold"])
    assert out.shape == (3, 8)
    assert not out[0].any() and not out[1].any()  # nothing, and unknown tokens only
    assert out[2].any()
    assert enc.encode([]).shape == (0, 8)


def test_a_folder_that_is_not_a_static_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a static embedding folder"):
        load_static_encoder(tmp_path)


def test_the_default_model_is_distilled_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERED_CACHE_DIR", str(tmp_path / "cache"))
    made: list[Path] = []

    def fake_distill(folder: Path, dims: int) -> Path:
        made.append(folder)
        return build_toy_static_model(folder, dim=dims)

    monkeypatch.setattr(se, "distill_minilm", fake_distill)
    assert se.distilled_path(12).parent == tmp_path / "cache"
    enc = load_static_encoder(dims=12)
    assert enc.dim == 12 and made == [se.distilled_path(12)]
    se._ENCODERS.pop(str(se.distilled_path(12)))  # as in a new process: nothing distilled
    assert load_static_encoder(dims=12).dim == 12
    assert len(made) == 1


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERED_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert se.cache_dir() == Path("/somewhere/tiered")
    monkeypatch.setenv("TIERED_CACHE_DIR", "/elsewhere")
    assert se.cache_dir() == Path("/elsewhere")


# ------------------------------------------------------------ static stage
TRAIN = [
    ("good film", "fresh"),
    ("the good film", "fresh"),
    ("good", "fresh"),
    ("bad film", "rotten"),
    ("the bad film", "rotten"),
    ("bad", "rotten"),
]


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_static_stage_learns_online(toy: Path, solver: str) -> None:
    model = build_model({"kind": "static_embedding", "model_path": str(toy), "solver": solver})
    assert model.predict(_items(["good"])).labels == [None]  # nothing learned yet
    texts, labels = zip(*TRAIN, strict=True)
    for _ in range(20):
        model.learn(_items(list(texts)), list(labels))  # type: ignore[attr-defined]
    a = model.predict(_items(["good film", "bad film"]))
    assert a.labels == ["fresh", "rotten"]
    assert a.classes == ("fresh", "rotten")


def test_static_stage_keeps_each_items_embedding_in_its_cache(toy: Path) -> None:
    model = StaticEmbeddingModel(model_path=str(toy))
    items = _items(["good film"])
    model.predict(items)
    (row,) = items[0].cache.values()
    np.testing.assert_array_equal(row, model.encoder.encode(["good film"])[0])


def test_static_state_is_plain_data_and_restores(toy: Path) -> None:
    model = StaticEmbeddingModel(model_path=str(toy))
    texts, labels = zip(*TRAIN, strict=True)
    model.learn(_items(list(texts)), list(labels))
    state = model.state_dict()
    _plain(state)
    other = StaticEmbeddingModel(model_path=str(toy))
    other.load_state_dict(state)
    probe = _items(["good", "the bad"])
    np.testing.assert_array_equal(model.predict(probe).probs, other.predict(probe).probs)


def test_static_state_of_another_table_is_refused(toy: Path, tmp_path: Path) -> None:
    model = StaticEmbeddingModel(model_path=str(toy))
    model.learn(_items(["good", "bad"]), ["fresh", "rotten"])
    other = StaticEmbeddingModel(model_path=str(tmp_path / "other"))
    with pytest.raises(StoreError, match="static embedding from"):
        other.load_state_dict(model.state_dict())


def test_bad_static_parameter_names_the_field() -> None:
    with pytest.raises(ConfigError, match="'dims' parameter of model 'static_embedding'"):
        build_model({"kind": "static_embedding", "dims": 1})


# ------------------------------------------------------- hashed + static stage
def test_hashed_static_rows_are_ngrams_then_the_weighted_embedding(toy: Path) -> None:
    model = HashedStaticModel(model_path=str(toy), n_features=2**10, static_weight=3.0)
    items = _items(["good film", "the gold price"])
    X = model._design(items)
    assert X.shape == (2, 2**10 + 8)
    emb = model.encoder.encode([it.text for it in items])
    np.testing.assert_allclose(X[:, 2**10 :].toarray(), 3.0 * emb, rtol=1e-6)
    ngrams = HashedNgramModel(n_features=2**10)._design(_items([it.text for it in items]))
    np.testing.assert_allclose(X[:, : 2**10].toarray(), ngrams.toarray())


def test_hashed_static_learns_and_restores_from_plain_state(toy: Path) -> None:
    def make() -> Any:
        spec = {"kind": "hashed_static", "model_path": str(toy), "n_features": 2**12}
        return build_model(spec)

    model = make()
    texts, labels = zip(*TRAIN, strict=True)
    for _ in range(10):
        model.learn(_items(list(texts)), list(labels))
    assert model.predict(_items(["good film", "bad film"])).labels == ["fresh", "rotten"]
    state = model.state_dict()
    _plain(state)
    other = make()
    other.load_state_dict(state)
    probe = _items(["good", "the bad"])
    np.testing.assert_array_equal(model.predict(probe).probs, other.predict(probe).probs)


def test_hashed_static_refuses_a_checkpoint_with_other_static_settings(toy: Path) -> None:
    model = HashedStaticModel(model_path=str(toy), n_features=2**10)
    model.learn(_items(["good", "bad"]), ["fresh", "rotten"])
    other = HashedStaticModel(model_path=str(toy), n_features=2**10, static_weight=2.0)
    with pytest.raises(StoreError, match="static embedding settings"):
        other.load_state_dict(model.state_dict())
    plain = build_model({"kind": "hashed_ngram", "n_features": 2**10})
    with pytest.raises(StoreError):
        model.load_state_dict(plain.state_dict())  # type: ignore[attr-defined]


# ---------------------------------------------------------------- real model
@pytest.mark.slow
def test_minilm_distils_offline_into_a_static_model_that_agrees_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiered.models.embedding import load_encoder

    monkeypatch.setenv("TIERED_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    static = load_static_encoder(dims=64)
    assert static.dim == 64 and static.path.parent == tmp_path
    texts = [
        "gold prices rise on weak dollar",
        "gold climbs as the dollar slips",
        "a dull film with a tired plot",
        "the movie is boring and far too long",
    ]
    full = load_encoder().encode(texts)
    for E in (static.encode(texts), full):
        sim = E @ E.T
        assert sim[0, 1] > max(sim[0, 2], sim[0, 3])  # the two gold headlines are nearest
        assert sim[2, 3] > max(sim[2, 0], sim[2, 1])  # and so are the two reviews
