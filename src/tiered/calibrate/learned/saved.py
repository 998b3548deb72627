"""A quality estimator on disk: a JSON file and an ``.npz`` of its arrays, never a pickle.

``est.save("cascade.estimator.json")`` writes ``cascade.estimator.json`` (parameters,
models, head settings, and where each array is) and ``cascade.estimator.npz`` next to it
(read with ``allow_pickle=False``); :func:`load_estimator_file` reads them back. Loading
runs no code from the files: a pickle or joblib file from an older tiered, or any other
file, is refused with an error naming it (refit the estimator).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.calibrate.learned.features import FeatureSpec
from tiered.calibrate.learned.heads import head_from_state, head_state
from tiered.errors import ConfigError, StoreError
from tiered.store.state import load_state_files, save_state_files

if TYPE_CHECKING:  # the estimator imports this module to save itself; it passes its class in
    from tiered.calibrate.learned.estimator import QualityEstimator

FORMAT = "tiered.calibrate.learned.QualityEstimator"
# 1: a joblib pickle (no longer read); 2: JSON + .npz
FORMAT_VERSION = 2
_KIND = "quality estimator"


def estimator_state(est: QualityEstimator) -> dict[str, Any]:
    """``est`` as plain data: heads as arrays and numbers (see :func:`head_state`)."""
    for h in (*est.exante_heads, *est.posthoc_heads):
        h.compact()
    fold_of = est._fold_of
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "models": list(est.models),
        "features": asdict(est.spec),
        "head": est.head,
        "calibration": est.calibration,
        "folds": est.folds,
        "alphas": list(est.alphas),
        "seed": est.seed,
        "posthoc": est.use_posthoc,
        "fitted_on": est.fitted_on,
        "extract": est.extract,
        "n_rows": est.n_rows,
        "exante_heads": [head_state(h) for h in est.exante_heads],
        "posthoc_heads": [head_state(h) for h in est.posthoc_heads],
        "signal_stats": [[list(s) for s in stats] for stats in est.signal_stats],
        "cost_fit": est.cost_fit,
        "kappa": est.kappa,
        "rank": est.rank,
        # which fold scores each training query (cross-fitting): keys and folds as columns
        "fold_keys": list(fold_of),
        "fold_of": np.fromiter(fold_of.values(), np.int64, len(fold_of)),
    }


def estimator_from_state(state: dict[str, Any], cls: type[QualityEstimator]) -> QualityEstimator:
    """The estimator :func:`estimator_state` saved."""
    spec = state["features"]
    spec["answer_ngrams"] = tuple(spec["answer_ngrams"])
    est = cls(
        list(state["models"]),
        features=FeatureSpec(**spec),
        head=state["head"],
        calibration=state["calibration"],
        folds=int(state["folds"]),
        alphas=[float(a) for a in state["alphas"]],
        seed=int(state["seed"]),
        posthoc=bool(state["posthoc"]),
    )
    m = len(est.models)
    est.fitted_on = state["fitted_on"]
    est.extract = state["extract"]
    est.n_rows = int(state["n_rows"])
    est.exante_heads = [head_from_state(h) for h in state["exante_heads"]]
    est.posthoc_heads = [head_from_state(h) for h in state["posthoc_heads"]]
    est.signal_stats = [
        [(str(n), float(mu), float(sd)) for n, mu, sd in stats] for stats in state["signal_stats"]
    ]
    est.cost_fit = np.asarray(state["cost_fit"], dtype=float).reshape(m, 4)
    est.kappa = np.asarray(state["kappa"], dtype=float).reshape(m)
    est.rank = np.asarray(state["rank"], dtype=np.int64).reshape(m)
    folds = np.asarray(state["fold_of"], dtype=np.int64).tolist()
    est._fold_of = dict(zip((str(k) for k in state["fold_keys"]), folds, strict=True))
    if not (len(est.exante_heads) == len(est.posthoc_heads) == len(est.signal_stats) == m):
        raise ValueError(f"{m} models but a different number of heads")
    est.token = uuid.uuid4().hex
    return est


def save_estimator(est: QualityEstimator, path: str | Path) -> Path:
    """Write ``est`` to ``path`` (a ``.json`` file) and its arrays to the ``.npz`` next to it."""
    p = Path(path)
    if p.suffix != ".json":
        raise ConfigError(
            "a quality estimator is saved as a .json file (its arrays go to an .npz next "
            f"to it); got {p.name!r}",
            path=p,
        )
    return save_state_files(estimator_state(est), p, kind=_KIND)


def load_estimator_file(path: str | Path, cls: type[QualityEstimator]) -> QualityEstimator:
    """Read an estimator :func:`save_estimator` wrote; anything else is a ConfigError."""
    p = Path(path)
    if not p.exists():
        raise ConfigError("quality estimator file not found", path=p)
    try:
        state = load_state_files(p, kind=_KIND)
    except StoreError as exc:
        raise ConfigError(f"{exc}; refit the estimator") from None
    if type(state) is not dict or state.get("format") != FORMAT:
        raise ConfigError("not a tiered quality estimator file", path=p)
    if state.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"quality estimator format version {state.get('version')} is not supported "
            f"(this tiered reads version {FORMAT_VERSION}); refit it",
            path=p,
        )
    try:
        return estimator_from_state(state, cls)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"quality estimator file holds malformed state ({type(exc).__name__}: {exc}); refit it",
            path=p,
        ) from None


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "estimator_from_state",
    "estimator_state",
    "load_estimator_file",
    "save_estimator",
]
