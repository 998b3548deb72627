"""Hashed word + character n-grams and an online linear model: the cheapest learnable stage.

Cascade file form::

    model: {kind: hashed_ngram}                                  # defaults
    model: {kind: hashed_ngram, alpha: 1.0e-6, n_features: 262144, classes: [up, down]}

Three layers, each usable alone:

- :class:`NgramHasher` turns texts into sparse rows (stateless: no vocabulary, so it
  works on a stream from the first item). It plays the role of two scikit-learn
  ``HashingVectorizer`` s (``analyzer="word"`` and ``analyzer="char_wb"``) summed, but
  hashes a whole batch with a handful of numpy operations instead of a Python loop per
  n-gram: about five times faster, which is what lets the stage run at tens of thousands
  of items per second.
- :class:`HashedNgramClassifier` is a scikit-learn estimator (``partial_fit``, ``fit``,
  ``predict_proba``, ``predict``, ``classes_``) over those rows, using
  ``SGDClassifier(loss="log_loss")``; its label set may grow mid-stream.
- :class:`HashedNgramModel` is the cascade stage (``Model`` + ``LearnableModel``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator, ClassifierMixin

from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import StoreError
from tiered.models._linear import LinearHeadModel, Matrix, OnlineLinear, SGDSettings
from tiered.models._params import parse_params

if TYPE_CHECKING:
    from tiered.checks import ModelCase

_M64 = (1 << 64) - 1
_P = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_GOLD = 0x9E3779B97F4A7C15
_WORD_SALT = np.uint64(0x5BD1E995)
_JOIN = np.uint64(0xC2B2AE3D27D4EB4F)
_CHUNK = 4096  # documents hashed at once: bounds the temporary arrays of a huge batch

_WHITESPACE = np.array(
    [
        *(9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680),
        *range(0x2000, 0x200B),
        *(0x2028, 0x2029, 0x202F, 0x205F, 0x3000),
    ],
    dtype=np.uint64,
)
_ASCII_WORD = np.zeros(128, dtype=bool)
_ASCII_WORD[
    [ord(ch) for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"]
] = True


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits (wraps mod 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _powers(base: int, n: int) -> np.ndarray:
    p = np.full(n, np.uint64(base), dtype=np.uint64)
    p[0] = 1
    return np.cumprod(p)  # uint64 arithmetic wraps modulo 2**64, as the hash wants


@dataclass(frozen=True, slots=True)
class NgramHasher:
    """Texts to sparse rows of hashed word and character n-grams.

    - words: runs of letters, digits and ``_`` (any non-ASCII letter too), as n-grams of
      ``word_ngram_range`` consecutive words;
    - characters: n-grams of ``char_ngram_range`` characters inside whitespace-separated
      words padded with one space on each side (scikit-learn's ``char_wb``).

    Each n-gram is a polynomial hash of its code points (through prefix sums, so a
    whole batch hashes in a few vector operations), finalised with splitmix64 and
    reduced modulo ``n_features``. Rows are not in canonical CSR form: a repeated n-gram
    appears as repeated entries (every sparse product sums them), and each entry is
    ``1/sqrt(number of n-grams in the text)``. A text's row never depends on the other
    texts of its batch.
    """

    n_features: int = 2**20
    word_ngram_range: tuple[int, int] = (1, 2)
    char_ngram_range: tuple[int, int] = (2, 5)
    lowercase: bool = True

    @property
    def cache_key(self) -> str:
        """Key of an item's rows in ``item.cache``: equal configs share them."""
        w, c = self.word_ngram_range, self.char_ngram_range
        return f"ngrams/{self.n_features}/w{w[0]}-{w[1]}/c{c[0]}-{c[1]}/{int(self.lowercase)}"

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The rows of ``texts`` as a CSR matrix ``(len(texts), n_features)``."""
        return self.from_rows(self.row_indices(texts))

    def row_indices(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's feature indices (int32, repeats kept); the compact cached form."""
        if len(texts) > _CHUNK:
            return [
                r
                for i in range(0, len(texts), _CHUNK)
                for r in self.row_indices(texts[i : i + _CHUNK])
            ]
        if not texts:
            return []
        rows, cols = self._hash(texts)
        order = np.argsort(rows, kind="stable")  # rows come in a few sorted runs: cheap
        cols = cols[order].astype(np.int32)
        bounds = np.cumsum(np.bincount(rows, minlength=len(texts)))[:-1]
        return [a.copy() for a in np.split(cols, bounds)]  # copies: a row pins no batch

    def from_rows(self, rows: Sequence[np.ndarray]) -> sp.csr_matrix:
        """The sparse matrix of rows given by :meth:`row_indices`."""
        counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        indptr = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
        data = np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts)
        return sp.csr_matrix(
            (data, indices.astype(np.int32, copy=False), indptr),
            shape=(len(rows), self.n_features),
        )

    def _hash(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(document, 64-bit hash) of every n-gram of every text."""
        if self.lowercase:
            texts = [t.lower() for t in texts]  # before measuring: lower() may change length
        lens = np.fromiter((len(t) + 2 for t in texts), dtype=np.int64, count=len(texts))
        big = "".join(f" {t} " for t in texts)
        code = np.frombuffer(big.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        code = code.astype(np.uint64)
        n = len(code)
        ws = np.isin(code, _WHITESPACE)
        code[ws] = 32
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        # prefix sums of code * P**i: the hash of code[a:b] is (G[b] - G[a]) * P**-a
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum((code + np.uint64(1)) * _powers(_P, n), out=prefix[1:])
        inv = _powers(_P_INV, n)
        docs: list[np.ndarray] = []
        hashes: list[np.ndarray] = []

        lo, hi = self.char_ngram_range
        spaces = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(ws, out=spaces[1:])
        for k in range(max(lo, 1), min(hi, n) + 1):
            start = np.arange(n - k + 1)
            # inside one word: no whitespace strictly inside, and not whitespace only
            if k == 1:
                ok = ~ws
            elif k == 2:
                ok = ~(ws[:-1] & ws[1:])
            else:
                ok = spaces[start + k - 1] == spaces[start + 1]
            start = start[ok]
            salt = np.uint64((k * _GOLD) & _M64)
            hashes.append(_mix((prefix[start + k] - prefix[start]) * inv[start] + salt))
            docs.append(doc[start])

        lo, hi = self.word_ngram_range
        if hi >= 1:
            small = code < 128
            word = np.where(small, _ASCII_WORD[np.where(small, code, 0).astype(np.intp)], ~ws)
            # non-ASCII punctuation and symbols (Latin-1, general and CJK punctuation)
            word &= ~(
                ((code >= 0x80) & (code < 0xC0))
                | (code == 0xD7)
                | (code == 0xF7)
                | ((code >= 0x2000) & (code < 0x2070))
                | ((code >= 0x3000) & (code < 0x3040))
            )
            edge = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
            a, b = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
            words = _mix((prefix[b] - prefix[a]) * inv[a] + _WORD_SALT)
            wdoc = doc[a]
            gram = words
            for k in range(1, hi + 1):
                if k > 1:  # gram[j] covers words j .. j+k-1
                    gram = _mix(gram[:-1] * _JOIN + words[k - 1 :])
                if k >= lo:
                    first = wdoc[: len(gram)]
                    same = first == wdoc[k - 1 :]  # all k words in one text
                    hashes.append(gram[same])
                    docs.append(first[same])
        h = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        d = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        return d, (h % np.uint64(self.n_features)).astype(np.int64)


class DocumentFrequencies:
    """Inverse document frequencies of hashed n-grams, counted online.

    tf-idf beats plain counts for a linear model on few labels (HEADLINES, expert at
    agreement 0.96, fixed deferral threshold: 30.4% expert calls instead of 33.0%), and a
    stream has no vocabulary to fit up front, so the document frequencies are counted as
    texts are learned. Weight of a feature: sklearn's smoothed
    ``log((1 + n) / (1 + df)) + 1`` (all 1 before any text: plain rows); each row is then
    scaled to unit length, entry by entry as :class:`NgramHasher` does.
    """

    def __init__(self, n_features: int) -> None:
        self.n_features = n_features
        self.df = np.zeros(n_features, dtype=np.int64)
        self.n_docs = 0

    def count(self, X: sp.csr_matrix) -> None:
        """Add the rows' documents (an n-gram repeated in a row counts once)."""
        if X.shape[0] == 0:
            return
        once = sp.csr_matrix(
            (np.ones(X.nnz, dtype=np.int8), X.indices.copy(), X.indptr.copy()), shape=X.shape
        )
        once.sum_duplicates()  # per-row sort in C: far cheaper than one np.unique
        np.add.at(self.df, once.indices, 1)
        self.n_docs += X.shape[0]

    def weigh(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """``X`` with each entry times its feature's idf, rows rescaled to unit length."""
        if self.n_docs == 0 or X.nnz == 0:
            return X
        idf = np.log((1.0 + self.n_docs) / (1.0 + self.df[X.indices])) + 1.0
        counts = np.diff(X.indptr)
        norms = np.sqrt(np.add.reduceat(idf * idf, X.indptr[:-1][counts > 0]))
        scale = np.ones(X.shape[0])
        scale[counts > 0] = 1.0 / norms
        data = idf * np.repeat(scale, counts)
        return sp.csr_matrix((data, X.indices, X.indptr), shape=X.shape)

    def state_dict(self) -> dict[str, Any]:
        used = np.flatnonzero(self.df)
        return {"n_docs": self.n_docs, "used": used, "df": self.df[used].copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.df = np.zeros(self.n_features, dtype=np.int64)
        self.df[np.asarray(state["used"], dtype=np.int64)] = state["df"]
        self.n_docs = int(state["n_docs"])


def _new_count_mark() -> str:
    """Key marking, in ``item.cache``, the items one model has counted for idf."""
    return f"idf-counted/{uuid.uuid4().hex}"


def _texts(items: Sequence[Item] | Sequence[str]) -> list[str]:
    return [x.text if isinstance(x, Item) else x for x in items]


class HashedNgramClassifier(SGDSettings, ClassifierMixin, BaseEstimator):
    """Online text classifier: :class:`NgramHasher` rows + ``SGDClassifier(log_loss)``.

    Parameters only are stored by ``__init__``. ``classes`` declares labels up front
    (they keep that order); labels never seen before are added when they first appear,
    after the known ones, and learning goes on warm. Before any learning,
    ``predict_proba`` is uniform over the known classes (an ``(n, 0)`` array if none).
    ``X`` may be texts or rows from :meth:`transform`.

    >>> clf = HashedNgramClassifier(n_features=2**16)
    >>> clf = clf.partial_fit(["gold rises", "gold falls"], ["up", "down"])
    >>> clf.classes_
    ('up', 'down')
    >>> clf.predict_proba(["silver rises"]).shape
    (1, 2)
    """

    linear_: OnlineLinear | None  # what was learned; made on first use
    df_: DocumentFrequencies | None  # document frequencies for idf; made on first use

    def __init__(
        self,
        n_features: int = 2**20,
        word_ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] = (2, 5),
        lowercase: bool = True,
        alpha: float = 1e-4,
        learning_rate: str = "optimal",
        eta0: float = 0.01,
        classes: Sequence[str] | None = None,
        seed: int = 0,
        max_pending: int = 1000,
        fit_epochs: int = 5,
        idf: bool = True,
    ) -> None:
        self.n_features = n_features
        self.word_ngram_range = word_ngram_range
        self.char_ngram_range = char_ngram_range
        self.lowercase = lowercase
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.classes = classes
        self.seed = seed
        self.max_pending = max_pending
        self.fit_epochs = fit_epochs
        self.idf = idf

    @property
    def hasher(self) -> NgramHasher:
        return NgramHasher(
            n_features=self.n_features,
            word_ngram_range=tuple(self.word_ngram_range),  # type: ignore[arg-type]
            char_ngram_range=tuple(self.char_ngram_range),  # type: ignore[arg-type]
            lowercase=self.lowercase,
        )

    def _linear(self) -> OnlineLinear:
        linear: OnlineLinear | None = getattr(self, "linear_", None)
        if linear is None:
            params = self._sgd_params()
            linear = self.linear_ = OnlineLinear(self.n_features, params, self.classes or ())
        return linear

    def _frequencies(self) -> DocumentFrequencies:
        df: DocumentFrequencies | None = getattr(self, "df_", None)  # made on first use
        if df is None:
            df = self.df_ = DocumentFrequencies(self.n_features)
        return df

    def count_documents(self, rows: sp.csr_matrix) -> None:
        """Count the rows' n-grams into the idf weights (no-op with ``idf=False``)."""
        if self.idf:
            self._frequencies().count(rows)

    def weigh(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        """Rows as the linear model sees them: idf-weighted when ``idf`` is on."""
        return self._frequencies().weigh(rows) if self.idf else rows

    def transform(self, X: Sequence[str] | sp.spmatrix) -> sp.csr_matrix:
        """Rows of texts, before idf weighting (rows given are returned as they are)."""
        if sp.issparse(X):
            return sp.csr_matrix(X)
        return self.hasher.transform(list(X))

    @property
    def classes_(self) -> tuple[str, ...]:
        return tuple(self._linear().classes)

    @property
    def n_seen_(self) -> int:
        """How many labels the model has learned from."""
        return self._linear().n_seen

    def partial_fit(
        self, X: Sequence[str] | sp.spmatrix, y: Sequence[str]
    ) -> HashedNgramClassifier:
        rows = self.transform(X)
        self.count_documents(rows)
        self._linear().partial_fit(self.weigh(rows), list(y))
        return self

    def fit(self, X: Sequence[str] | sp.spmatrix, y: Sequence[str]) -> HashedNgramClassifier:
        """Forget what was learned, count the documents once, then ``fit_epochs`` SGD passes."""
        self.linear_ = None
        self.df_ = None
        rows = self.transform(X)
        self.count_documents(rows)
        weighed = self.weigh(rows)
        for _ in range(self.fit_epochs):
            self._linear().partial_fit(weighed, list(y))
        return self

    def predict_proba(self, X: Sequence[str] | sp.spmatrix) -> np.ndarray:
        return self._linear().predict_proba(self.weigh(self.transform(X)))

    def predict(self, X: Sequence[str] | sp.spmatrix) -> np.ndarray:
        probs = self.predict_proba(X)
        classes = np.array(self.classes_, dtype=object)
        if probs.shape[1] == 0:
            return np.full(probs.shape[0], None, dtype=object)
        return classes[probs.argmax(axis=1)]


class HashedNgramModel(LinearHeadModel):
    """The hashed n-gram classifier as a cascade stage that learns online.

    ``predict`` answers the most likely class with its probabilities (label ``None``
    until the model has learned from a label), costs ``cost_per_call`` per item, and
    reports the measured time of the batch spread over its items. The items' n-gram rows
    are kept in ``item.cache`` so that ``learn`` on the same items does not hash them
    again. ``learn`` ignores items whose label is ``None``; with ``idf`` on (the default)
    it counts each item's n-grams into the idf weights once, however often the item is
    learned again (an online cascade replays labelled items).
    """

    tags = ModelTags(gives_probabilities=True, learns_online=True)

    @classmethod
    def contract_case(cls) -> ModelCase:
        """How the contract checks (:mod:`tiered.checks`) build this model: its defaults."""
        from tiered.checks import ModelCase

        return ModelCase.from_spec({"kind": "hashed_ngram"})

    def __init__(
        self,
        name: str = "hashed_ngram",
        *,
        cost_per_call: float = 0.0,
        cache_features: bool = True,
        **params: Any,
    ) -> None:
        self.name = name
        self.cost_per_call = cost_per_call
        self.cache_features = cache_features
        self.classifier = HashedNgramClassifier(**params)
        self._counted_key = _new_count_mark()
        # Marks of the model this one was restored from: (its key, its document count at
        # the checkpoint). An item it had marked by then is in the restored counts.
        self._counted_before: list[tuple[str, int]] = []

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._counted_key = _new_count_mark()  # a copy has counted nothing yet
        self._counted_before = []

    def __repr__(self) -> str:
        return f"HashedNgramModel(name={self.name!r}, classes={list(self.classes)})"

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes_

    def features(self, items: Sequence[Item]) -> sp.csr_matrix:
        """The items' n-gram rows, hashed once per item and kept in ``item.cache``."""
        hasher = self.classifier.hasher
        if not self.cache_features:
            return hasher.transform(_texts(items))
        key = hasher.cache_key
        rows: list[np.ndarray | None] = [it.cache.get(key) for it in items]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            fresh = hasher.row_indices([items[i].text for i in missing])
            for i, r in zip(missing, fresh, strict=True):
                rows[i] = items[i].cache[key] = r
        return hasher.from_rows(rows)  # type: ignore[arg-type]

    def _design(self, items: Sequence[Item]) -> sp.csr_matrix:
        return self.classifier.weigh(self.features(items))

    def _observe(self, items: Sequence[Item]) -> None:
        if not self.classifier.idf:
            return
        key = self._counted_key
        new = [it for it in items if key not in it.cache and not self._counted_before_restore(it)]
        if new:
            self.classifier.count_documents(self.features(new))
            # the mark is the document count after them: see _counted_before_restore
            seq = self.classifier._frequencies().n_docs
            for it in new:
                it.cache[key] = seq

    def _counted_before_restore(self, item: Item) -> bool:
        """Whether the model this one was restored from had counted ``item`` by its
        checkpoint (an item it counted later, still live in this process, is not in the
        restored counts)."""
        for key, upto in self._counted_before:
            mark = item.cache.get(key)
            if mark is not None and mark <= upto:
                return True
        return False

    def _head(self, X: Matrix) -> OnlineLinear:
        return self.classifier._linear()

    def state_dict(self) -> dict[str, Any]:
        """What the model learned, as plain data (for checkpoints)."""
        return {
            "kind": "hashed_ngram",
            "params": self.classifier.get_params(),
            "linear": self.classifier._linear().state_dict(),
            "document_frequencies": self.classifier._frequencies().state_dict(),
            # which items are in the counts (the cascade's label buffer keeps their marks):
            # a restored model must not count them again
            "counted_marks": [
                *self._counted_before,
                (self._counted_key, self.classifier._frequencies().n_docs),
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.classifier.hasher
        made_with = HashedNgramClassifier(**state["params"])
        theirs = made_with.hasher
        if state.get("kind") != "hashed_ngram" or theirs != mine:
            raise StoreError(
                f"checkpoint of model '{self.name}' was made with {theirs}, "
                f"and this model uses {mine}"
            )
        if made_with.idf != self.classifier.idf:
            raise StoreError(
                f"checkpoint of model '{self.name}' was made with idf={made_with.idf}, "
                f"and this model has idf={self.classifier.idf}"
            )
        self.classifier._linear().load_state_dict(state["linear"])
        # a checkpoint from before idf has no counts: its rows stay plain until new ones
        frequencies = self.classifier.df_ = DocumentFrequencies(self.classifier.n_features)
        if "document_frequencies" in state:
            frequencies.load_state_dict(state["document_frequencies"])
        self._counted_key = _new_count_mark()
        self._counted_before = [(str(k), int(n)) for k, n in state.get("counted_marks", [])]


class HashedNgramParams(BaseModel):
    """Parameters of ``kind: hashed_ngram`` (descriptions are the error messages)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("hashed_ngram", description="a non-empty string", min_length=1)
    n_features: int = Field(2**20, ge=16, le=2**30, description="an int in [16, 2**30]")
    word_ngram_range: tuple[int, int] = Field(
        (1, 2), description="a pair [lo, hi] of ints with 0 <= lo <= hi (0 turns words off)"
    )
    char_ngram_range: tuple[int, int] = Field(
        (2, 5), description="a pair [lo, hi] of ints with 0 <= lo <= hi (0 turns chars off)"
    )
    lowercase: bool = Field(True, description="a bool")
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
    cost_per_call: float = Field(0.0, ge=0, description="a float >= 0 (USD)")
    cache_features: bool = Field(True, description="a bool")
    idf: bool = Field(True, description="a bool (weigh n-grams by idf, counted online)")


def _ngram_range_ok(value: tuple[int, int]) -> bool:
    return 0 <= value[0] <= value[1]


@register_model("hashed_ngram")
def build_hashed_ngram(spec: dict[str, Any], ctx: BuildContext) -> HashedNgramModel:
    """Build a :class:`HashedNgramModel` from its spec (see :class:`HashedNgramParams`)."""
    p = parse_params(
        "hashed_ngram",
        HashedNgramParams,
        spec,
        checks={"word_ngram_range": _ngram_range_ok, "char_ngram_range": _ngram_range_ok},
    )
    kwargs = p.model_dump()
    if kwargs["classes"] is not None:
        kwargs["classes"] = tuple(kwargs["classes"])
    return HashedNgramModel(**kwargs)


__all__ = [
    "HashedNgramClassifier",
    "HashedNgramModel",
    "HashedNgramParams",
    "NgramHasher",
    "build_hashed_ngram",
]
