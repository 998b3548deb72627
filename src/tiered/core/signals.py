"""Confidence signals: named numbers per answer that deferral rules read.

A signal is either carried by the answers (``answers.signals[name]``: ``logprob``,
``score``, anything a model or log records) or derived here from class probabilities
(``max_prob``, ``margin``, ``entropy``) or from k samples (``vote``). For every signal
but ``entropy`` higher means more confident.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.errors import SignalMissingError

LOWER_IS_CONFIDENT = frozenset({"entropy"})


def _need_probs(answers: AnswerBatch, name: str) -> np.ndarray:
    if answers.probs is None:
        raise SignalMissingError(
            f"signal '{name}' needs class probabilities, and these answers carry none"
        )
    return answers.probs


def max_prob(answers: AnswerBatch) -> np.ndarray:
    top: np.ndarray = _need_probs(answers, "max_prob").max(axis=1)
    return top


def margin(answers: AnswerBatch) -> np.ndarray:
    """Top-1 minus top-2 probability."""
    p = _need_probs(answers, "margin")
    if p.shape[1] < 2:
        return np.ones(p.shape[0])
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy(answers: AnswerBatch) -> np.ndarray:
    p = np.clip(_need_probs(answers, "entropy"), 1e-12, 1.0)
    h: np.ndarray = -(p * np.log(p)).sum(axis=1)
    return h


def vote_share(samples: list[list[str]]) -> np.ndarray:
    """Share of each item's samples equal to their majority answer (Mixture-of-Thought vote)."""
    out = np.full(len(samples), np.nan)
    for i, s in enumerate(samples):
        if s:
            out[i] = Counter(s).most_common(1)[0][1] / len(s)
    return out


def vote(answers: AnswerBatch) -> np.ndarray:
    if "vote" in answers.signals:
        return answers.signals["vote"]
    if answers.samples is None:
        raise SignalMissingError("signal 'vote' needs k samples per answer, and these carry none")
    return vote_share(answers.samples)


DERIVED: dict[str, Callable[[AnswerBatch], np.ndarray]] = {
    "max_prob": max_prob,
    "margin": margin,
    "entropy": entropy,
    "vote": vote,
}


def read_signal(answers: AnswerBatch, name: str) -> np.ndarray:
    """The signal ``name`` for every answer (NaN where an answer lacks it)."""
    if name in answers.signals:
        return np.asarray(answers.signals[name], dtype=float)
    if name in DERIVED and _derivable(answers, name):
        return DERIVED[name](answers)
    need = {"vote": " (it needs k samples)"}.get(name, " (it needs class probabilities)")
    raise SignalMissingError(
        f"signal '{name}' is not carried by these answers{need if name in DERIVED else ''}; "
        f"available: {', '.join(available_signals(answers)) or 'none'}"
    )


def _derivable(answers: AnswerBatch, name: str) -> bool:
    if name == "vote":
        return answers.samples is not None
    return answers.probs is not None


def available_signals(answers: AnswerBatch) -> list[str]:
    """Names of every signal readable from these answers."""
    return sorted(set(answers.signals) | {k for k in DERIVED if _derivable(answers, k)})


def higher_is_confident(name: str) -> bool:
    return name not in LOWER_IS_CONFIDENT


__all__ = [
    "available_signals",
    "entropy",
    "higher_is_confident",
    "margin",
    "max_prob",
    "read_signal",
    "vote",
    "vote_share",
]
