"""MemoryLogistic: the refitted logistic head of the embedding stage (no encoder needed)."""

from __future__ import annotations

import numpy as np
import pytest

from tiered.errors import StoreError
from tiered.models._linear import LinearParams, MemoryLogistic, OnlineLinear
from tiered.models.embedding import EmbeddingClassifier, EmbeddingModel, EmbeddingParams


def _blobs(
    n: int, k: int, seed: int, d: int = 16, spread: float = 0.6
) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(k, d))
    y = rng.integers(0, k, n)
    X = centers[y] + spread * rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # unit length, like sentence embeddings
    return X.astype(np.float32), [f"c{j}" for j in y]


def _accuracy(model: MemoryLogistic | OnlineLinear, X: np.ndarray, y: list[str]) -> float:
    pred = np.array(model.classes, dtype=object)[model.predict_proba(X).argmax(axis=1)]
    return float(np.mean(pred == np.array(y, dtype=object)))


def _log_loss(model: MemoryLogistic | OnlineLinear, X: np.ndarray, y: list[str]) -> float:
    p = model.predict_proba(X)
    right = p[np.arange(len(y)), [model.classes.index(v) for v in y]]
    return float(-np.mean(np.log(np.clip(right, 1e-12, 1.0))))


def test_refitted_head_beats_one_sgd_pass_on_few_labels() -> None:
    X, y = _blobs(2200, 4, seed=0, spread=0.9)
    mem = MemoryLogistic(16)
    sgd = OnlineLinear(16, LinearParams())
    for i in range(0, 200, 20):  # a stream's few labels, in small batches
        mem.partial_fit(X[i : i + 20], y[i : i + 20])
        sgd.partial_fit(X[i : i + 20].astype(np.float64), y[i : i + 20])
    test_X, test_y = X[200:], y[200:]
    assert _accuracy(mem, test_X, test_y) > _accuracy(sgd, test_X, test_y) + 0.02
    assert _log_loss(mem, test_X, test_y) < 0.6 * _log_loss(sgd, test_X, test_y)
    p = mem.predict_proba(test_X)
    assert p.shape == (2000, 4) and np.allclose(p.sum(axis=1), 1.0)


def test_memory_keeps_the_newest_distinct_rows() -> None:
    X, y = _blobs(60, 2, seed=1)
    mem = MemoryLogistic(16, memory=50)
    mem.partial_fit(X[:40], y[:40])
    mem.partial_fit(X[:40], y[:40])  # replayed rows replace their copies
    assert len(mem._rows) == 40 and mem.n_seen == 80
    mem.partial_fit(X[40:], y[40:])
    assert len(mem._rows) == 50
    kept = set(mem._rows)
    assert X[0].tobytes() not in kept and X[59].tobytes() in kept  # oldest dropped


def test_label_set_grows_in_first_seen_order_and_starts_uniform() -> None:
    mem = MemoryLogistic(16, classes=("c1",))
    assert mem.predict_proba(np.zeros((2, 16))).tolist() == [[1.0], [1.0]]
    X, y = _blobs(300, 3, seed=2)
    two = [i for i, v in enumerate(y) if v != "c2"]
    mem.partial_fit(X[two], [y[i] for i in two])
    assert mem.classes == ["c1", "c0"]
    mem.partial_fit(X, y)  # a third label appears
    assert mem.classes == ["c1", "c0", "c2"]
    assert _accuracy(mem, X, y) > 0.9


def test_state_round_trip_predicts_identically() -> None:
    X, y = _blobs(200, 3, seed=3)
    mem = MemoryLogistic(16, C=3.0, memory=150)
    mem.partial_fit(X[:100], y[:100])
    copy = MemoryLogistic(16)
    copy.load_state_dict(mem.state_dict())
    assert np.allclose(copy.predict_proba(X), mem.predict_proba(X))
    mem.partial_fit(X[100:], y[100:])
    copy.partial_fit(X[100:], y[100:])  # the memory came along: learning goes on alike
    assert np.allclose(copy.predict_proba(X), mem.predict_proba(X), atol=1e-6)


def test_embedding_classifier_uses_the_refitted_head_by_default_and_sgd_on_request() -> None:
    X, y = _blobs(200, 2, seed=4)
    lbfgs = EmbeddingClassifier().partial_fit(X, y)
    sgd = EmbeddingClassifier(solver="sgd").partial_fit(X, y)
    assert isinstance(lbfgs.linear_, MemoryLogistic)
    assert isinstance(sgd.linear_, OnlineLinear)
    assert EmbeddingParams.model_validate({}).solver == "lbfgs"
    with pytest.raises(ValueError, match="solver"):
        EmbeddingParams.model_validate({"solver": "adam"})


def test_embedding_checkpoint_of_another_solver_is_refused() -> None:
    X, y = _blobs(50, 2, seed=5)
    sgd_model = EmbeddingModel(solver="sgd")
    sgd_model.classifier.partial_fit(X, y)
    state = sgd_model.state_dict()
    lbfgs_model = EmbeddingModel()
    with pytest.raises(StoreError, match="solver"):
        lbfgs_model.load_state_dict(state)
    again = EmbeddingModel(solver="sgd")
    again.load_state_dict(state)
    assert again.classes == sgd_model.classes
