"""One binary quality predictor: a scikit-learn learner, calibrated on held-out folds.

A :class:`Head` is fitted with k-fold cross-fitting: one learner per fold (trained on the
other folds) gives out-of-fold scores, a calibration map (Platt or isotonic) is fitted on
those, and a final learner is trained on all rows. The fold learners are kept, so rows
the head was trained on can still be scored by a learner that never saw them
(``predict(X, fold)``): replaying the training log then measures what a new log would.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier

HeadKind = Literal["logistic", "mlp"]
CalibrationKind = Literal["sigmoid", "isotonic"]
_CLIP = 30.0


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -_CLIP, _CLIP)))


def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / max(w.sum(), 1e-12))


@dataclass
class Calibration:
    """Maps a learner's raw logit to a probability (identity until fitted)."""

    method: CalibrationKind = "sigmoid"
    a: float = 1.0
    b: float = 0.0
    iso: IsotonicRegression | None = None

    def fit(self, z: np.ndarray, y: np.ndarray, w: np.ndarray) -> Calibration:
        if len(np.unique(y)) < 2:
            return self
        if self.method == "isotonic":
            self.iso = IsotonicRegression(y_min=1e-4, y_max=1 - 1e-4, out_of_bounds="clip")
            self.iso.fit(z, y, sample_weight=w)
        else:
            lr = LogisticRegression(C=1e4, solver="newton-cholesky")
            lr.fit(z[:, None], y, sample_weight=w)
            self.a, self.b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        return self

    def __call__(self, z: np.ndarray) -> np.ndarray:
        if self.iso is not None:
            return np.asarray(self.iso.predict(z), dtype=float)
        return sigmoid(self.a * z + self.b)


def _learner(kind: HeadKind, alpha: float, seed: int) -> Any:
    if kind == "mlp":
        return MLPClassifier(
            hidden_layer_sizes=(32,), alpha=alpha, max_iter=60, random_state=seed, tol=1e-4
        )
    return SGDClassifier(loss="log_loss", alpha=alpha, max_iter=60, tol=1e-4, random_state=seed)


def _raw(learner: Any, X: sp.csr_matrix) -> np.ndarray:
    if hasattr(learner, "decision_function"):
        return np.asarray(learner.decision_function(X), dtype=float)
    return logit(learner.predict_proba(X)[:, 1])


@contextmanager
def _quiet() -> Iterator[None]:
    # a few epochs short of convergence is fine here: calibration absorbs it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@dataclass
class Head:
    """P(correct) for one model from one kind of features (ex-ante or post-hoc)."""

    kind: HeadKind = "logistic"
    calibration: Calibration = field(default_factory=Calibration)
    seed: int = 0
    alpha: float = 1e-4
    learner: Any = None  # None with ``const`` set: too few labels of one class to learn
    folds: list[Any] = field(default_factory=list)
    const: float | None = None
    n_seen: int = 0

    def fit(
        self,
        X: sp.csr_matrix,
        y: np.ndarray,
        w: np.ndarray,
        fold: np.ndarray,
        alphas: Sequence[float],
    ) -> np.ndarray:
        """Fit on all rows; return calibrated out-of-fold probabilities for every row."""
        self.n_seen = len(y)
        k = int(fold.max()) + 1 if len(fold) else 0
        pos = float((w * y).sum())
        neg = float((w * (1 - y)).sum())
        if min(pos, neg) < 3 or k < 2:
            # too few of one class: predict the smoothed rate
            self.const = (pos + 1.0) / (pos + neg + 2.0)
            self.learner, self.folds = None, []
            return np.full(len(y), self.const)
        best: tuple[float, float, list[Any], np.ndarray, Calibration] | None = None
        with _quiet():
            for alpha in alphas:
                learners, z = [], np.zeros(len(y))
                for f in range(k):
                    tr, te = fold != f, fold == f
                    lrn = _learner(self.kind, alpha, self.seed)
                    if len(np.unique(y[tr])) < 2:
                        lrn = _Const(float(y[tr].mean()) if tr.any() else 0.5)
                    else:
                        self._fit_one(lrn, X[tr], y[tr], w[tr])
                    learners.append(lrn)
                    if te.any():
                        z[te] = _raw(lrn, X[te])
                cal = Calibration(self.calibration.method).fit(z, y, w)
                loss = log_loss(y, cal(z), w)
                if best is None or loss < best[0]:
                    best = (loss, alpha, learners, z, cal)
            assert best is not None
            _, self.alpha, self.folds, z, self.calibration = best
            self.learner = _learner(self.kind, self.alpha, self.seed)
            self._fit_one(self.learner, X, y, w)
        for lrn in self.folds:  # fold learners only predict: keep them small
            if hasattr(lrn, "sparsify"):
                lrn.sparsify()
        self.const = None
        return self.calibration(z)

    def _fit_one(self, learner: Any, X: sp.csr_matrix, y: np.ndarray, w: np.ndarray) -> None:
        if isinstance(learner, MLPClassifier):
            # MLPClassifier takes no sample weights: resample by weight instead
            rng = np.random.default_rng(self.seed)
            idx = rng.choice(len(y), size=len(y), p=w / w.sum())
            learner.fit(X[idx], y[idx])
        else:
            learner.fit(X, y, sample_weight=w)

    def predict(self, X: sp.csr_matrix, fold: np.ndarray | None = None) -> np.ndarray:
        """P(correct) per row; rows with ``fold >= 0`` use the learner that did not see them."""
        n = X.shape[0]
        if self.learner is None:
            return np.full(n, 0.5 if self.const is None else self.const)
        z = np.empty(n)
        if fold is None or not self.folds:
            z[:] = _raw(self.learner, X)
        else:
            own = fold < 0
            if own.any():
                z[own] = _raw(self.learner, X[own])
            for f in np.unique(fold[~own]).tolist():
                at = fold == f
                z[at] = _raw(self.folds[f], X[at])
        return self.calibration(z)

    def partial_fit(self, X: sp.csr_matrix, y: np.ndarray) -> None:
        """Learn from new labelled rows (online); the calibration map is kept."""
        self.n_seen += len(y)
        if self.learner is None:
            self.learner = _learner(self.kind, self.alpha, self.seed)
            self.const = None
        with _quiet():
            if hasattr(self.learner, "densify") and sp.issparse(
                getattr(self.learner, "coef_", None)
            ):
                self.learner.densify()
            self.learner.partial_fit(X, y, classes=np.array([0.0, 1.0]))

    def compact(self) -> None:
        """Sparse coefficients for saving (``partial_fit`` densifies them again)."""
        coef = getattr(self.learner, "coef_", None)
        if coef is not None and not sp.issparse(coef) and hasattr(self.learner, "sparsify"):
            self.learner.sparsify()


@dataclass
class _Const:
    """A fold with a single class in training: predicts its rate."""

    p: float

    def decision_function(self, X: sp.csr_matrix) -> np.ndarray:
        return np.full(X.shape[0], float(logit(np.array([self.p]))[0]))


# -- saving: plain data (arrays + JSON, see tiered.store.state), never a pickle ----------

_SKLEARN: dict[str, type[Any]] = {
    "SGDClassifier": SGDClassifier,
    "MLPClassifier": MLPClassifier,
    "IsotonicRegression": IsotonicRegression,
}
# made again on loading: from the other attributes, or at the next fit
_REBUILT = frozenset({"_loss_function_", "_label_binarizer", "_random_state", "_optimizer", "f_"})


def _sklearn_state(est: Any) -> dict[str, Any]:
    """A fitted scikit-learn object as its parameters and fitted arrays and numbers."""
    name = type(est).__name__
    if _SKLEARN.get(name) is not type(est):
        raise TypeError(f"cannot save a {type(est).__qualname__} as a quality estimator part")
    params = est.get_params(deep=False)
    fitted = {k: v for k, v in vars(est).items() if k not in params and k not in _REBUILT}
    state: dict[str, Any] = {"class": name, "params": params, "fitted": fitted}
    opt = getattr(est, "_optimizer", None)
    if opt is not None:  # Adam's moments: online learning after loading goes on as before
        if type(opt).__name__ != "AdamOptimizer":
            raise TypeError(f"cannot save an MLP with a {type(opt).__name__}")
        state["adam"] = {"t": opt.t, "ms": opt.ms, "vs": opt.vs, "learning_rate": opt.learning_rate}
    return state


def _sklearn_from_state(state: dict[str, Any]) -> Any:
    cls = _SKLEARN[state["class"]]
    est = cls(**state["params"])
    for k, v in state["fitted"].items():
        if not k.isidentifier() or k.startswith("__") or k in state["params"] or k in _REBUILT:
            raise ValueError(f"unexpected attribute {k!r} of a {state['class']}")
        setattr(est, k, v)
    if isinstance(est, IsotonicRegression):
        est._build_f(est.X_thresholds_, est.y_thresholds_)
    if isinstance(est, MLPClassifier) and hasattr(est, "classes_"):
        from sklearn.preprocessing import LabelBinarizer

        est._label_binarizer = LabelBinarizer().fit(est.classes_)
    if "adam" in state:
        from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

        a = state["adam"]
        opt = AdamOptimizer(
            est.coefs_ + est.intercepts_,
            est.learning_rate_init,
            est.beta_1,
            est.beta_2,
            est.epsilon,
        )
        opt.t, opt.learning_rate = int(a["t"]), float(a["learning_rate"])
        opt.ms, opt.vs = list(a["ms"]), list(a["vs"])
        est._optimizer = opt
    return est


def _learner_state(learner: Any) -> dict[str, Any]:
    if isinstance(learner, _Const):
        return {"class": "const", "p": learner.p}
    return _sklearn_state(learner)


def _learner_from_state(state: dict[str, Any]) -> Any:
    if state["class"] == "const":
        return _Const(float(state["p"]))
    return _sklearn_from_state(state)


def head_state(head: Head) -> dict[str, Any]:
    """``head`` as plain data: learners as their parameters, arrays and numbers."""
    cal = head.calibration
    return {
        "kind": head.kind,
        "seed": head.seed,
        "alpha": head.alpha,
        "const": head.const,
        "n_seen": head.n_seen,
        "calibration": {
            "method": cal.method,
            "a": cal.a,
            "b": cal.b,
            "iso": None if cal.iso is None else _sklearn_state(cal.iso),
        },
        "learner": None if head.learner is None else _learner_state(head.learner),
        "folds": [_learner_state(f) for f in head.folds],
    }


def head_from_state(state: dict[str, Any]) -> Head:
    """The head :func:`head_state` saved (every learner rebuilt from its arrays)."""
    cal = state["calibration"]
    if state["kind"] not in ("logistic", "mlp") or cal["method"] not in ("sigmoid", "isotonic"):
        raise ValueError(f"unknown head kind {state['kind']!r} or calibration {cal['method']!r}")
    return Head(
        kind=state["kind"],
        calibration=Calibration(
            method=cal["method"],
            a=float(cal["a"]),
            b=float(cal["b"]),
            iso=None if cal["iso"] is None else _sklearn_from_state(cal["iso"]),
        ),
        seed=int(state["seed"]),
        alpha=float(state["alpha"]),
        learner=None if state["learner"] is None else _learner_from_state(state["learner"]),
        folds=[_learner_from_state(f) for f in state["folds"]],
        const=None if state["const"] is None else float(state["const"]),
        n_seen=int(state["n_seen"]),
    )


__all__ = [
    "Calibration",
    "CalibrationKind",
    "Head",
    "HeadKind",
    "head_from_state",
    "head_state",
    "log_loss",
    "logit",
    "sigmoid",
]
