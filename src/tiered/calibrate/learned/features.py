"""Features of queries and answers for quality estimators.

Everything is hashed (scikit-learn's ``HashingVectorizer``), so there is no vocabulary to
fit and a featurizer is the same object for training, online updates and scoring:

- **query**: word 1–2-grams of the query's tail (few-shot prompts repeat their prefix; the
  question comes last), task/subject tokens (``mmlu/anatomy`` gives ``task:mmlu`` and
  ``task:mmlu/anatomy``), the log length, and optionally a MiniLM sentence embedding.
- **answer**: character 2–5-grams of the answer, its length, and the shape of its numbers
  against the query's (how many of the query's numbers it uses, whether its final number
  is an integer or merely copies one from the query): cheap verifier-like cues that a
  small log cannot learn from n-grams alone.

Agreement with earlier stages and the model's own signals are added by the estimator,
which knows the models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

from tiered.models.hashed_ngram import NgramHasher

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
ANSWER_SHAPE = (
    "has_answer",
    "log_length",
    "query_has_numbers",
    "uses_query_numbers",
    "has_number",
    "final_is_integer",
    "final_in_query",
    "short_last_line",
    "distinct_numbers",
)


def task_tokens(task: str) -> list[str]:
    """``mmlu/anatomy`` -> ``task:mmlu``, ``task:mmlu/anatomy`` (the hierarchy is a feature)."""
    parts = task.split("/")
    return [f"task:{'/'.join(parts[: i + 1])}" for i in range(len(parts))]


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(text.replace(",", ""))]


def query_numbers(query: str) -> set[float]:
    return set(_numbers(query))


def answer_shape(q: set[float], answer: str | None) -> list[float]:
    """Cheap cues on how an answer's numbers relate to the query's numbers ``q``."""
    if not answer:
        return [0.0] * len(ANSWER_SHAPE)
    nums = _numbers(answer)
    last_line = answer.rstrip().rsplit("\n", 1)[-1]
    final = nums[-1] if nums else math.nan
    return [
        1.0,
        math.log1p(len(answer)) / 8.0,
        float(bool(q)),
        len(q & set(nums)) / len(q) if q else 0.0,
        float(bool(nums)),
        float(bool(nums) and final.is_integer()),
        float(bool(nums) and final in q),
        float(len(last_line.strip()) <= 25),
        math.log1p(len(set(nums))) / 4.0,
    ]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How queries and answers are turned into features (all hashed: nothing to fit)."""

    query_features: int = 2**16
    answer_features: int = 2**15
    task_features: int = 2**10
    max_chars: int = 4000  # the tail of long prompts is the question
    max_answer_chars: int = 400  # the tail of long answers (where the final answer is)
    answer_ngrams: tuple[int, ...] = (3,)  # character n-gram lengths
    # agreement with earlier answers on: the whole answer ("exact"), its final number, its
    # option letter, or whichever of these makes the models agree most on the training log
    agreement: Literal["auto", "exact", "final_number", "choice"] = "auto"
    embed: bool = False  # append a MiniLM sentence embedding of the query
    embed_weight: float = 1.0


_FNV = np.uint64(1099511628211)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def hash_char_ngrams(texts: Sequence[str], ns: Sequence[int], n_features: int) -> sp.csr_matrix:
    """Hashed, l2-normalised counts of the lower-cased character n-grams of each text.

    The same features ``HashingVectorizer(analyzer="char")`` gives, computed with numpy over
    all texts at once (no Python loop per n-gram): several times faster, which is what
    keeps scoring under 0.1 ms per item per stage.
    """
    n_rows = len(texts)
    enc = [t.lower().encode("utf-8") for t in texts]
    lens = np.fromiter((len(e) for e in enc), np.int64, n_rows)
    b = np.frombuffer(b"".join(enc), dtype=np.uint8).astype(np.uint64)
    ends = np.cumsum(lens)
    total = len(b)
    X = sp.csr_matrix((n_rows, n_features), dtype=np.float32)
    for n in ns:
        m = total - n + 1
        if m <= 0:
            continue
        h = b[:m] + np.uint64(1)
        for k in range(1, n):
            h = h * _FNV + b[k : k + m] + np.uint64(1)
        h = (h ^ np.uint64(n)) * _MIX
        h ^= h >> np.uint64(29)
        valid = np.ones(m, dtype=bool)
        for k in range(1, n):  # n-grams that would cross into the next text
            cut = ends - k
            valid[cut[(cut >= 0) & (cut < m)]] = False
        cols = (h[valid] % np.uint64(n_features)).astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(np.maximum(lens - n + 1, 0))])
        X = X + sp.csr_matrix(
            (np.ones(len(cols), np.float32), cols, indptr), shape=(n_rows, n_features)
        )
    X.sum_duplicates()
    per_row = np.diff(X.indptr)
    norms = np.ones(n_rows, dtype=np.float32)
    has = per_row > 0
    if has.any():
        norms[has] = np.sqrt(np.add.reduceat(X.data**2, X.indptr[:-1][has]))
    X.data /= np.repeat(norms, per_row)
    return X


def _task_analyzer(task: str) -> list[str]:
    return task_tokens(task) if task else []


class Featurizer:
    """Builds the sparse feature matrices of a :class:`FeatureSpec`."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        # tiered's own numpy hasher: the same kind of word 1-2-gram features as sklearn's
        # HashingVectorizer at about a fifth of the time (query hashing dominates scoring)
        self._query = NgramHasher(
            n_features=spec.query_features, word_ngram_range=(1, 2), char_ngram_range=(0, 0)
        )
        self._task = HashingVectorizer(
            n_features=spec.task_features,
            analyzer=_task_analyzer,
            alternate_sign=False,
            norm=None,
            dtype=np.float32,
        )
        self._encoder: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # the encoder is a torch model: reload it on demand instead of pickling it
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    @property
    def query_dim(self) -> int:
        s = self.spec
        return s.query_features + s.task_features + 1 + (EMBED_DIM if s.embed else 0)

    def query(
        self,
        texts: Sequence[str],
        tasks: Sequence[str | None],
        embeddings: np.ndarray | None = None,
    ) -> sp.csr_matrix:
        """Query features: hashed n-grams of the tail, task tokens, log length (+ embedding).

        With ``spec.embed``, ``embeddings`` (n, 384) are appended (computed here if None).
        """
        cut = self.spec.max_chars
        words = self._query.transform([t[-cut:] for t in texts])
        task = self._task.transform([t or "" for t in tasks])
        length = np.log1p(np.fromiter((len(t) for t in texts), float, len(texts))) / 10.0
        blocks: list[Any] = [words, task, sp.csr_matrix(length[:, None].astype(np.float32))]
        if self.spec.embed:
            emb = self.embed(texts) if embeddings is None else embeddings
            blocks.append(sp.csr_matrix(emb * self.spec.embed_weight))
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    def answer(
        self, query_nums: Sequence[set[float]], answers: Sequence[str | None]
    ) -> sp.csr_matrix:
        """Answer features: hashed character n-grams of its tail and the answer's shape.

        ``query_nums``: each query's numbers (:func:`query_numbers`), computed once per item.
        """
        spec = self.spec
        cut = spec.max_answer_chars
        tails = [(a or "")[-cut:] for a in answers]
        grams = hash_char_ngrams(tails, spec.answer_ngrams, spec.answer_features)
        shape = np.array(
            [answer_shape(q, a) for q, a in zip(query_nums, answers, strict=True)],
            dtype=np.float32,
        ).reshape(len(answers), len(ANSWER_SHAPE))
        return sp.hstack([grams, sp.csr_matrix(shape)], format="csr", dtype=np.float32)

    @property
    def answer_dim(self) -> int:
        return self.spec.answer_features + len(ANSWER_SHAPE)

    @property
    def encoder(self) -> Any:
        """The MiniLM encoder (loaded on first use, shared with the embedding stage)."""
        if self._encoder is None:
            self._encoder = load_encoder()
        return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """MiniLM sentence embeddings (unit length), from the PyPI-shipped model."""
        return np.asarray(self.encoder.encode(list(texts)), dtype=np.float32)


EMBED_DIM = 384


def load_encoder() -> Any:
    """The embedding stage's MiniLM encoder (``tiered.models.embedding``), loaded once."""
    from tiered.models.embedding import load_encoder as load

    return load()


__all__ = [
    "ANSWER_SHAPE",
    "EMBED_DIM",
    "FeatureSpec",
    "Featurizer",
    "answer_shape",
    "hash_char_ngrams",
    "load_encoder",
    "query_numbers",
    "task_tokens",
]
