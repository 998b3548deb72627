"""Hashed n-grams and static sentence embeddings side by side: one online linear stage.

Cascade file form::

    model: {kind: hashed_static}                        # MiniLM distilled to 256 dims
    model: {kind: hashed_static, static_weight: 0.5, n_features: 262144}

Each text's row is its idf-weighted hashed n-gram row (as ``kind: hashed_ngram`` makes
it) followed by its static embedding (as ``kind: static_embedding`` makes
it, unit length) times ``static_weight``; one :class:`~tiered.models._linear.OnlineLinear`
learns on both. The SGD steps move every embedding weight at every label, so a short
embedding keeps them from drowning the n-grams: with ``static_weight`` 0.35 (the
default) a fully supervised stage needs the expert for 23.3% of HEADLINES items at
agreement 0.96 instead of 24.6% for the n-grams alone (Rotten Tomatoes: 62.6% instead of
65.3%); at 1.0 it does no better than the n-grams (``benchmarks/stream.py --floor``).
The n-grams carry the exact wording, the embedding what the words mean (synonyms, words
never labelled yet), at a cost of a token-table lookup per text: the stage stays at
thousands of items per second. Takes every ``hashed_ngram`` parameter, plus
``model_path`` and ``dims`` of ``static_embedding``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from tiered.core.items import Item
from tiered.core.spec import BuildContext, register_model
from tiered.errors import StoreError
from tiered.models._linear import Matrix, OnlineLinear
from tiered.models._params import parse_params
from tiered.models.hashed_ngram import HashedNgramModel, HashedNgramParams, _ngram_range_ok
from tiered.models.static_embedding import (
    StaticEncoder,
    embed_items,
    load_static_encoder,
    toy_static_folder,
)

if TYPE_CHECKING:
    from tiered.checks import ModelCase


class HashedStaticParams(HashedNgramParams):
    """Parameters of ``kind: hashed_static``: those of ``hashed_ngram`` and these."""

    name: str = Field("hashed_static", description="a non-empty string", min_length=1)
    model_path: str | None = Field(None, description="the path of a local model2vec folder")
    dims: int = Field(256, ge=2, le=384, description="an int in [2, 384] (MiniLM distilled)")
    static_weight: float = Field(
        0.35, gt=0, description="a float > 0 (length of the embedding next to the n-grams')"
    )


class HashedStaticModel(HashedNgramModel):
    """The hashed n-gram stage with a static embedding appended to every row.

    Answers, learns and counts idf like :class:`~tiered.models.hashed_ngram.HashedNgramModel`;
    its linear model reads ``n_features + dim`` columns.
    """

    @classmethod
    def contract_case(cls) -> ModelCase:
        """How the contract checks (:mod:`tiered.checks`) build this model: on a toy
        static model (no transformer, no distilling)."""
        from tiered.checks import ModelCase

        spec = {"kind": "hashed_static", "model_path": str(toy_static_folder())}
        return ModelCase.from_spec(spec)

    def __init__(
        self,
        name: str = "hashed_static",
        *,
        model_path: str | None = None,
        dims: int = 256,
        static_weight: float = 0.35,
        **params: Any,
    ) -> None:
        super().__init__(name, **params)
        self.model_path = model_path
        self.dims = dims
        self.static_weight = static_weight
        self.linear: OnlineLinear | None = None  # made on first use

    def __repr__(self) -> str:
        return f"HashedStaticModel(name={self.name!r}, classes={list(self.classes)})"

    @property
    def encoder(self) -> StaticEncoder:
        # looked up, never stored: the model pickles without the token table
        return load_static_encoder(self.model_path, self.dims)

    @property
    def classes(self) -> tuple[str, ...]:
        if self.linear is None:
            return tuple(self.classifier.classes or ())
        return tuple(self.linear.classes)

    def _design(self, items: Sequence[Item]) -> sp.csr_matrix:
        ngrams = super()._design(items)
        embedded = embed_items(self.encoder, items).astype(np.float64)
        if self.static_weight != 1.0:
            embedded *= self.static_weight
        return sp.hstack([ngrams, sp.csr_matrix(embedded)], format="csr")

    def _head(self, X: Matrix) -> OnlineLinear:
        if self.linear is None:
            c = self.classifier
            self.linear = OnlineLinear(X.shape[1], c._sgd_params(), c.classes or ())
        return self.linear

    def _static_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "dims": self.dims,
            "static_weight": self.static_weight,
        }

    def state_dict(self) -> dict[str, Any]:
        """What the model learned, as plain data (for checkpoints)."""
        state = super().state_dict()  # n-gram settings and idf counts
        state.update(
            kind="hashed_static",
            static=self._static_params(),
            linear=None if self.linear is None else self.linear.state_dict(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs, mine = state.get("static"), self._static_params()
        if state.get("kind") != "hashed_static" or theirs != mine:
            raise StoreError(
                f"checkpoint of model '{self.name}' was made with static embedding "
                f"settings {theirs}, and this model uses {mine}"
            )
        # the n-gram part's own linear model is unused here: hand it a fresh one
        unused = self.classifier._linear().state_dict()
        super().load_state_dict({**state, "kind": "hashed_ngram", "linear": unused})
        self.linear = None
        if state["linear"] is not None:
            width = int(state["linear"]["n_features"])
            self._head(sp.csr_matrix((0, width))).load_state_dict(state["linear"])


@register_model("hashed_static")
def build_hashed_static(spec: dict[str, Any], ctx: BuildContext) -> HashedStaticModel:
    """Build a :class:`HashedStaticModel` from its spec (see :class:`HashedStaticParams`)."""
    p = parse_params(
        "hashed_static",
        HashedStaticParams,
        spec,
        checks={"word_ngram_range": _ngram_range_ok, "char_ngram_range": _ngram_range_ok},
    )
    kwargs = p.model_dump()
    if kwargs["classes"] is not None:
        kwargs["classes"] = tuple(kwargs["classes"])
    if kwargs["model_path"] is not None:
        path = Path(kwargs["model_path"])
        kwargs["model_path"] = str(path if path.is_absolute() else ctx.base_dir / path)
    return HashedStaticModel(**kwargs)


__all__ = ["HashedStaticModel", "HashedStaticParams", "build_hashed_static"]
