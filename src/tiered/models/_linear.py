"""Online logistic regression over a label set that may grow mid-stream.

Shared by the learnable cheap stages (hashed n-grams, sentence embeddings). The
per-sample learning is scikit-learn's ``SGDClassifier(loss="log_loss")``: one-vs-rest,
one binary logistic model per class (a single one for two classes). Around it, this
module handles what a stream needs and sklearn does not give:

- **A growing label set.** sklearn's ``partial_fit`` needs every class on its first
  call. Here, before any label probabilities are an ``(n, 0)`` array; while fewer than
  two classes are known, rows wait in a bounded buffer (``max_pending``, newest kept)
  and probabilities are uniform over the known classes; a new label once fitted adds a
  row of zero weights with the lowest known intercept (the new class starts unlikely
  rather than at odds of 1:1) and learning goes on warm, keeping every known class's
  weights and the step-size schedule. Classes keep their first-seen order (declared
  ``classes`` first): a known class never moves.
- **Cost per call independent of ``n_features``.** sklearn walks the whole weight vector
  several times per call and class (and, with a penalty set, per *sample*: sklearn 1.9
  adds the penalty to a loss it tracks by computing the weight norms for every sample),
  which caps learning on 2**20 hashed features at a few hundred items/s. So each call
  runs sklearn on the batch's own columns only (weights gathered, learned, scattered
  back) and the L2 penalty is applied here as a lazy global scale: sklearn shrinks the
  weights by ``1 - eta_t * alpha`` before each sample's step; the product of those
  factors over the batch is folded into ``scale`` after it (weights learned inside one
  batch are shrunk slightly more than sklearn would). Results match sklearn's own
  L2-penalised SGD closely (a test pins the agreement).

Weights are stored feature-major, ``(n_features, rows)``, so that a sparse batch times
the weights needs no copy of the weight matrix. sklearn's SGD calls BLAS on short
vectors; a multi-threaded BLAS then spends more time waking threads than working (10x
slower on a busy 2-core machine), so learning runs with BLAS limited to one thread.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from threadpoolctl import ThreadpoolController

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item

Matrix: TypeAlias = np.ndarray | sp.csr_matrix

STATE_VERSION = 1
_MIN_SCALE = 1e-9  # below it the lazy scale is folded into the weights
_THREADPOOLS: list[ThreadpoolController] = []  # made on first use (finding libraries: ~25 ms)


def _one_blas_thread() -> Any:
    """A context limiting BLAS to one thread (cheap: ~0.1 ms)."""
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


@dataclass(frozen=True, slots=True)
class LinearParams:
    """Hyper-parameters of :class:`OnlineLinear` (see ``SGDClassifier`` for their meaning)."""

    alpha: float = 1e-4
    learning_rate: str = "optimal"  # or "constant", "invscaling"
    eta0: float = 0.01
    seed: int = 0
    max_pending: int = 1000


class SGDSettings:
    """The SGD hyper-parameters an estimator keeps as attributes (sklearn style), as one
    :class:`LinearParams`; shared by the text classifiers that put an
    :class:`OnlineLinear` on their features."""

    alpha: float
    learning_rate: str
    eta0: float
    seed: int
    max_pending: int

    def _sgd_params(self) -> LinearParams:
        return LinearParams(
            alpha=self.alpha,
            learning_rate=self.learning_rate,
            eta0=self.eta0,
            seed=self.seed,
            max_pending=self.max_pending,
        )


class OnlineLinear:
    """One-vs-rest SGD logistic regression whose label set grows as labels arrive."""

    def __init__(self, n_features: int, params: LinearParams, classes: Sequence[str] = ()) -> None:
        self.n_features = n_features
        self.params = params
        self.classes: list[str] = []
        self._index: dict[str, int] = {}
        for c in classes:
            self._add_class(str(c))
        self.n_seen = 0
        # weights: effective coef = scale * coef, shape (n_features, rows); None until fitted
        self.coef: np.ndarray | None = None
        self.intercept = np.zeros(0)
        self.scale = 1.0
        self.t = 1.0  # sklearn's step counter (the learning-rate schedule)
        # rows learned while fewer than two classes were known (bounded, newest kept)
        self._pending_X: list[Matrix] = []
        self._pending_y: list[np.ndarray] = []

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    # ---------------------------------------------------------------- learning
    def partial_fit(self, X: Matrix, labels: Sequence[str]) -> None:
        """One SGD pass over ``X`` with ``labels`` (new labels grow the class set)."""
        y = np.asarray([str(x) for x in labels], dtype=object)
        if X.shape[0] != len(y):
            raise ValueError(f"got {X.shape[0]} rows and {len(y)} labels")
        if X.shape[1] != self.n_features:
            raise ValueError(f"got {X.shape[1]} features, expected {self.n_features}")
        if len(y) == 0:
            return
        self.n_seen += len(y)
        known = len(self.classes)
        for label in dict.fromkeys(y.tolist()):  # first-seen order, deduplicated
            if label not in self._index:
                self._add_class(label)
        if len(self.classes) < 2:
            self._hold(X, y)
            return
        if self.coef is None:
            X, y = self._with_pending(X, y)
            rows = 1 if len(self.classes) == 2 else len(self.classes)
            self.coef = np.zeros((self.n_features, rows))
            self.intercept = np.zeros(rows)
        elif len(self.classes) > known:
            self._grow(known)
        self._sgd_pass(X, y)

    def _sgd_pass(self, X: Matrix, y: np.ndarray) -> None:
        assert self.coef is not None
        if sp.issparse(X):
            # learn on the batch's own columns only: cost independent of n_features
            rows = sp.csr_matrix(X)
            cols, local = np.unique(np.asarray(rows.indices), return_inverse=True)
            X = sp.csr_matrix(
                (rows.data, local.astype(np.int32), rows.indptr), shape=(rows.shape[0], len(cols))
            )
            weights = self.coef[cols].T * self.scale
        else:
            cols = None
            weights = self.coef.T * self.scale
        p = self.params
        sgd = SGDClassifier(
            loss="log_loss",
            penalty=None,  # applied by _l2_shrink (see the module docstring)
            alpha=p.alpha,
            learning_rate=p.learning_rate,
            eta0=p.eta0,
            random_state=p.seed,
        )
        # warm start by setting the fitted attributes: partial_fit(classes=...) would
        # sort the classes and start from zero weights
        sgd.classes_ = np.array(self.classes, dtype=str)
        sgd.coef_ = np.ascontiguousarray(weights)
        sgd.intercept_ = self.intercept.copy()
        sgd.t_ = self.t
        sgd.n_features_in_ = X.shape[1]
        with _one_blas_thread():
            sgd.partial_fit(X, y.astype(str))
        learned = sgd.coef_.T / self.scale
        if cols is None:
            self.coef[:] = learned
        else:
            self.coef[cols] = learned
        self.intercept = np.asarray(sgd.intercept_, dtype=np.float64).copy()
        shrink = self._l2_shrink(self.t, len(y))
        self.t = float(sgd.t_)
        if shrink == 0.0:
            self.coef[:] = 0.0
            self.scale = 1.0
        else:
            self.scale *= shrink
            if self.scale < _MIN_SCALE:
                self.coef *= self.scale
                self.scale = 1.0

    def _l2_shrink(self, t_first: float, n: int) -> float:
        """Product of sklearn's per-sample L2 factors ``max(0, 1 - eta_t * alpha)``."""
        p = self.params
        t = t_first + np.arange(n, dtype=np.float64)
        if p.learning_rate == "optimal":
            # sklearn: eta_t = 1 / (alpha * (t0 + t - 1)) with t0 = 1 / (alpha * typw),
            # typw = sqrt(1 / sqrt(alpha)) (the log-loss gradient there is below 1)
            t0 = 1.0 / (np.sqrt(1.0 / np.sqrt(p.alpha)) * p.alpha)
            eta = 1.0 / (p.alpha * (t0 + t - 1.0))
        elif p.learning_rate == "invscaling":
            eta = p.eta0 / np.sqrt(t)  # sklearn's default power_t = 0.5
        else:
            eta = np.full(n, p.eta0)
        factors = 1.0 - eta * p.alpha
        if (factors <= 0).any():
            return 0.0
        return float(np.exp(np.log(factors).sum()))

    def _add_class(self, label: str) -> None:
        self._index[label] = len(self.classes)
        self.classes.append(label)

    def _hold(self, X: Matrix, y: np.ndarray) -> None:
        self._pending_X.append(X)
        self._pending_y.append(y)
        held = sum(len(p) for p in self._pending_y)
        while held > self.params.max_pending:
            over = held - self.params.max_pending
            first = len(self._pending_y[0])
            if first <= over:
                self._pending_X.pop(0)
                self._pending_y.pop(0)
                held -= first
            else:
                self._pending_X[0] = self._pending_X[0][over:]
                self._pending_y[0] = self._pending_y[0][over:]
                held -= over

    def _with_pending(self, X: Matrix, y: np.ndarray) -> tuple[Matrix, np.ndarray]:
        if not self._pending_y:
            return X, y
        xs = [*self._pending_X, X]
        stacked = sp.vstack(xs, format="csr") if sp.issparse(X) else np.vstack(xs)
        ys = np.concatenate([*self._pending_y, y])
        self._pending_X, self._pending_y = [], []
        return stacked, ys

    def _grow(self, known: int) -> None:
        """Add weight columns for classes ``known:``, keeping what was learned."""
        assert self.coef is not None
        coef, intercept = self.coef, self.intercept
        if known == 2:  # binary form: one column for classes[1]; class 0 is its negation
            coef = np.column_stack([-coef[:, 0], coef[:, 0]])
            intercept = np.array([-intercept[0], intercept[0]])
        new = len(self.classes) - known
        self.coef = np.column_stack([coef, np.zeros((self.n_features, new))])
        self.intercept = np.concatenate([intercept, np.full(new, intercept.min())])

    # -------------------------------------------------------------- predicting
    def decision_function(self, X: Matrix) -> np.ndarray:
        """Scores ``(n, rows)``: one column for two classes, one per class otherwise."""
        assert self.coef is not None
        return np.asarray(X @ self.coef) * self.scale + self.intercept

    def predict_proba(self, X: Matrix) -> np.ndarray:
        """Class probabilities ``(n, len(classes))``: uniform before any fit."""
        n, k = X.shape[0], len(self.classes)
        if self.coef is None:
            return np.full((n, k), 1.0 / k) if k else np.zeros((n, 0))
        scores = self.decision_function(X)
        if k == 2:
            p1 = expit(scores[:, 0])
            return np.column_stack([1.0 - p1, p1])
        # one-vs-rest: each class's own probability, normalised (as sklearn does)
        prob = expit(scores)
        total = prob.sum(axis=1, keepdims=True)
        return np.divide(prob, total, out=np.full_like(prob, 1.0 / k), where=total > 0)

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain data (numpy arrays, lists, numbers); only weight rows in use are kept."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "n_features": self.n_features,
            "params": asdict(self.params),
            "classes": list(self.classes),
            "n_seen": self.n_seen,
            "t": self.t,
            "pending_X": list(self._pending_X),
            "pending_y": [y.tolist() for y in self._pending_y],
            "fitted": self.coef is not None,
        }
        if self.coef is not None:
            used = np.flatnonzero(np.any(self.coef != 0, axis=1))
            state.update(
                used=used.astype(np.int64),
                coef=self.coef[used].copy(),
                scale=self.scale,
                rows=self.coef.shape[1],
                intercept=self.intercept.copy(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {state.get('version')!r}")
        if state["n_features"] != self.n_features:
            raise ValueError(
                f"state has {state['n_features']} features, this model {self.n_features}"
            )
        self.params = LinearParams(**state["params"])
        self.classes, self._index = [], {}
        for c in state["classes"]:
            self._add_class(c)
        self.n_seen = int(state["n_seen"])
        self.t = float(state["t"])
        self._pending_X = list(state["pending_X"])
        self._pending_y = [np.asarray(y, dtype=object) for y in state["pending_y"]]
        self.scale = 1.0
        self.coef = None
        self.intercept = np.zeros(0)
        if state["fitted"]:
            self.coef = np.zeros((self.n_features, state["rows"]))
            self.coef[state["used"]] = state["coef"]
            self.scale = float(state["scale"])
            self.intercept = np.asarray(state["intercept"], dtype=np.float64).copy()

    def __getstate__(self) -> dict[str, Any]:
        return self.state_dict()  # compact: hashed weights are mostly zero

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.n_features = state["n_features"]
        self.load_state_dict(state)


class MemoryLogistic:
    """Multinomial logistic regression refitted on a bounded memory of labelled rows.

    For dense features of modest width (sentence embeddings): a stream stage gets few
    labels, and plain SGD on unit-length embeddings is far from the optimum after a few
    thousand of them (on HEADLINES, MiniLM + SGD needs the expert for 52% of items at
    agreement 0.96, the same embeddings with a fitted logistic regression about 32%).
    So each ``partial_fit`` adds its rows to a memory of the newest ``memory`` *distinct*
    rows (a row seen again, e.g. replayed, replaces its older copy: no double weight) and
    refits by L-BFGS, warm-started from the current weights (a few iterations once the
    memory is large). Cost per call grows with ``memory * n_features``: about 0.1-0.4 s
    for 5000 x 384 on one core, small next to encoding the texts. Same interface as
    :class:`OnlineLinear` (classes in first-seen order, uniform probabilities before a fit,
    a label set that grows).
    """

    def __init__(
        self,
        n_features: int,
        C: float = 10.0,
        memory: int = 5000,
        classes: Sequence[str] = (),
        max_iter: int = 100,
    ) -> None:
        self.n_features = n_features
        self.C = C
        self.memory = memory
        self.max_iter = max_iter
        self.classes: list[str] = [str(c) for c in dict.fromkeys(classes)]
        self.n_seen = 0
        self._rows: dict[bytes, tuple[np.ndarray, str]] = {}  # insertion order = age
        self.coef: np.ndarray | None = None  # (n_fitted, n_features), softmax form
        self.intercept = np.zeros(0)
        self.fitted_classes: list[str] = []

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def partial_fit(self, X: Matrix, labels: Sequence[str]) -> None:
        """Remember the rows with their labels, then refit on the memory."""
        X = np.asarray(X.toarray() if isinstance(X, sp.spmatrix) else X, dtype=np.float32)
        y = [str(v) for v in labels]
        if X.shape[0] != len(y):
            raise ValueError(f"got {X.shape[0]} rows and {len(y)} labels")
        if X.shape[1] != self.n_features:
            raise ValueError(f"got {X.shape[1]} features, expected {self.n_features}")
        if not y:
            return
        self.n_seen += len(y)
        for row, label in zip(X, y, strict=True):
            if label not in self.classes:
                self.classes.append(label)
            key = row.tobytes()
            self._rows.pop(key, None)  # re-inserted: now the newest
            self._rows[key] = (row.copy(), label)
        while len(self._rows) > self.memory:
            del self._rows[next(iter(self._rows))]
        self._refit()

    def _refit(self) -> None:
        from sklearn.linear_model import LogisticRegression

        rows = list(self._rows.values())
        ys = np.array([y for _, y in rows], dtype=object)
        seen = set(ys.tolist())
        present = [c for c in self.classes if c in seen]
        if len(present) < 2:
            return
        X = np.stack([r for r, _ in rows]).astype(np.float64)
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, warm_start=True)
        order = sorted(present)  # sklearn's class order
        if self.coef is not None and sorted(self.fitted_classes) == order:
            pos = [self.fitted_classes.index(c) for c in order]
            if len(order) == 2:  # sklearn's binary form: one row for the second class
                lr.coef_ = (self.coef[pos[1]] - self.coef[pos[0]])[None, :]
                lr.intercept_ = np.array([self.intercept[pos[1]] - self.intercept[pos[0]]])
            else:
                lr.coef_ = self.coef[pos].copy()
                lr.intercept_ = self.intercept[pos].copy()
        with _one_blas_thread(), warnings.catch_warnings():
            # a warm start that stops at max_iter is fine: the next call goes on from it
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr.fit(X, ys.astype(str))
        coef, intercept = lr.coef_, lr.intercept_
        if len(order) == 2:
            coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]])
        self.coef, self.intercept = np.asarray(coef, dtype=np.float64), intercept.astype(float)
        self.fitted_classes = [str(c) for c in lr.classes_]

    def predict_proba(self, X: Matrix) -> np.ndarray:
        """Class probabilities ``(n, len(classes))``: uniform before any fit; classes
        known but absent from the memory get 0."""
        n, k = X.shape[0], len(self.classes)
        if self.coef is None:
            return np.full((n, k), 1.0 / k) if k else np.zeros((n, 0))
        z = np.asarray(X @ self.coef.T) + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        out = np.zeros((n, k))
        out[:, [self.classes.index(c) for c in self.fitted_classes]] = p
        return out

    def state_dict(self) -> dict[str, Any]:
        rows = list(self._rows.values())
        return {
            "version": STATE_VERSION,
            "kind": "memory_logistic",
            "n_features": self.n_features,
            "C": self.C,
            "memory": self.memory,
            "max_iter": self.max_iter,
            "classes": list(self.classes),
            "n_seen": self.n_seen,
            "X": np.stack([r for r, _ in rows]) if rows else np.zeros((0, self.n_features)),
            "y": [y for _, y in rows],
            "coef": None if self.coef is None else self.coef.copy(),
            "intercept": self.intercept.copy(),
            "fitted_classes": list(self.fitted_classes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION or state.get("kind") != "memory_logistic":
            raise ValueError("not a MemoryLogistic state")
        if state["n_features"] != self.n_features:
            raise ValueError(
                f"state has {state['n_features']} features, this model {self.n_features}"
            )
        self.C, self.memory = float(state["C"]), int(state["memory"])
        self.max_iter = int(state["max_iter"])
        self.classes = list(state["classes"])
        self.n_seen = int(state["n_seen"])
        X = np.asarray(state["X"], dtype=np.float32)
        self._rows = {row.tobytes(): (row.copy(), y) for row, y in zip(X, state["y"], strict=True)}
        self.coef = None if state["coef"] is None else np.asarray(state["coef"], dtype=float)
        self.intercept = np.asarray(state["intercept"], dtype=float)
        self.fitted_classes = list(state["fitted_classes"])


class LinearHeadModel:
    """``predict``/``learn`` of a cascade stage that puts an :class:`OnlineLinear` on features.

    Subclasses say how items become a design matrix (``_design``) and which head reads it
    (``_head``); answering, the "no class seen yet" outcome and skipping unlabelled items
    are the same for every such stage.
    """

    cost_per_call: float

    def _design(self, items: Sequence[Item]) -> Matrix:
        raise NotImplementedError

    def _head(self, X: Matrix) -> OnlineLinear | MemoryLogistic:
        raise NotImplementedError

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        t0 = time.perf_counter()
        n = len(items)
        X = self._design(items)
        linear = self._head(X)
        probs = linear.predict_proba(X)
        classes = tuple(linear.classes)
        signals: dict[str, np.ndarray] = {}
        if linear.n_seen == 0:
            labels: list[str | None] = [None] * n
            if not classes:  # no class to give a probability to: signals say "unknown"
                signals = {s: np.full(n, np.nan) for s in ("max_prob", "margin", "entropy")}
        else:
            labels = np.array(classes, dtype=object)[probs.argmax(axis=1)].tolist()
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        return AnswerBatch.from_labels(
            labels,
            cost=self.cost_per_call,
            latency_ms=elapsed_ms / n if n else 0.0,
            probs=probs,
            classes=classes,
            signals=signals,
        )

    def learn(self, items: Sequence[Item], labels: Sequence[str | None]) -> None:
        if len(items) != len(labels):
            raise ValueError(f"got {len(items)} items and {len(labels)} labels")
        keep = [i for i, y in enumerate(labels) if y is not None]
        if not keep:
            return
        if len(keep) < len(items):
            items = [items[i] for i in keep]
            labels = [labels[i] for i in keep]
        self._observe(items)
        X = self._design(items)
        self._head(X).partial_fit(X, [str(y) for y in labels])

    def _observe(self, items: Sequence[Item]) -> None:
        """Hook: see the labelled items before learning from them (unsupervised state)."""


__all__ = ["LinearHeadModel", "LinearParams", "MemoryLogistic", "OnlineLinear", "SGDSettings"]
