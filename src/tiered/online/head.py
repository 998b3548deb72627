"""Learned deferral heads: per cheap stage, P(this stage agrees with the expert | features).

As in Online Cascade Learning (Nie et al., ICML 2024), a small model reads a stage's
probability vector and learns, from every item the expert labelled, whether the stage
was right. Here it is an L2-regularised logistic regression on a handful of features,
refitted by a few Newton steps (warm-started) on a bounded ring buffer of the newest
labelled examples, so it follows drift and costs microseconds per batch.

Features of one answer (all bounded):

- ``logit(max_prob)``, ``margin`` (top-1 minus top-2), normalised entropy;
- the stage's recent accuracy (an exponentially weighted mean over labelled items);
- the recent accuracy of the stage *when it predicts this label*: a new topic that the
  stage keeps mistaking for an old label shows up here first.

Items labelled by the expert are mostly those the stage deferred; selection depends only
on these features (plus independent randomness for warm-up, exploration and audits), so
the conditional model stays consistent where the features are informative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered.core.answers import AnswerBatch

N_FEATURES = 6
_CLIP = 8.0


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1.0 - 1e-4)
    return np.clip(np.log(p / (1.0 - p)), -_CLIP, _CLIP)


class AccuracyTracker:
    """Exponentially weighted accuracy of one stage, overall and per predicted label.

    Starts from a prior of one right and one wrong answer (0.5); a label seen rarely
    borrows strength from the overall accuracy.
    """

    def __init__(self, halflife: float) -> None:
        self.decay = 0.5 ** (1.0 / halflife)
        self.hits = 1.0
        self.weight = 2.0
        self.per_label: dict[str, list[float]] = {}
        self.label_prior = 5.0

    @property
    def overall(self) -> float:
        return self.hits / self.weight

    def update(
        self,
        predicted: Sequence[str | None],
        correct: np.ndarray,
        weight: np.ndarray | None = None,
    ) -> None:
        """Fold in labelled answers; ``weight`` (inverse probability of being labelled)
        makes the mean stand for everything the stage answered, not only what it deferred."""
        w = np.ones(len(correct)) if weight is None else weight
        for label, ok, wi in zip(predicted, correct.tolist(), w.tolist(), strict=True):
            d = self.decay**wi
            self.hits = self.hits * d + wi * ok
            self.weight = self.weight * d + wi
            if label is None:
                continue
            hw = self.per_label.setdefault(label, [0.0, 0.0])
            hw[0] = hw[0] * d + wi * ok
            hw[1] = hw[1] * d + wi

    def label_accuracy(self, predicted: Sequence[str | None]) -> np.ndarray:
        base = self.overall
        m = self.label_prior
        out = np.empty(len(predicted))
        for i, label in enumerate(predicted):
            hw = self.per_label.get(label) if label is not None else None
            out[i] = base if hw is None else (hw[0] + m * base) / (hw[1] + m)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "weight": self.weight,
            "per_label": {k: list(v) for k, v in self.per_label.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hits = float(state["hits"])
        self.weight = float(state["weight"])
        self.per_label = {k: list(v) for k, v in state["per_label"].items()}


def head_features(answers: AnswerBatch, tracker: AccuracyTracker) -> np.ndarray:
    """The head's feature matrix ``(n, N_FEATURES)`` for a stage's answers."""
    n = len(answers)
    x = np.empty((n, N_FEATURES))
    x[:, 0] = 1.0
    if answers.probs is not None and answers.probs.shape[1] > 0:
        p = answers.probs
        k = p.shape[1]
        if k >= 2:
            top2 = np.partition(p, k - 2, axis=1)[:, -2:]
            top, second = top2[:, 1], top2[:, 0]
        else:
            top, second = p[:, 0], np.zeros(n)
        q = np.clip(p, 1e-12, 1.0)
        ent = -(q * np.log(q)).sum(axis=1) / np.log(k) if k >= 2 else np.zeros(n)
        x[:, 1] = _logit(top) / 4.0
        x[:, 2] = top - second
        x[:, 3] = ent
    else:  # a stage without probabilities: its recent accuracy is all there is
        x[:, 1] = _CLIP / 4.0
        x[:, 2] = 1.0
        x[:, 3] = 0.0
    x[:, 4] = _logit(np.array(tracker.overall)) / 4.0
    x[:, 5] = _logit(tracker.label_accuracy(answers.labels)) / 4.0
    return x


def max_prob_from_features(x: np.ndarray) -> np.ndarray:
    """The top probability a feature row was computed from (inverse of its column 1)."""
    return 1.0 / (1.0 + np.exp(-4.0 * x[:, 1]))


class DeferralHead:
    """Logistic regression of "the stage was right" on :func:`head_features`.

    Examples are weighted by their inverse probability of having been labelled and by
    their age (``halflife`` labelled examples): a stage's probabilities mean something
    different as it learns, so recent examples count more. One right and one wrong
    pseudo-example keep the fit finite when the stage was always right (or wrong).
    """

    def __init__(
        self, capacity: int, l2: float, min_examples: int, halflife: float = 1000.0
    ) -> None:
        self.capacity = capacity
        self.l2 = l2
        self.min_examples = min_examples
        self.halflife = halflife
        self.x = np.zeros((capacity, N_FEATURES))
        self.y = np.zeros(capacity)
        self.w = np.zeros(capacity)
        self.stamp = np.zeros(capacity)
        self.count = 0
        self.size = 0
        self.pos = 0
        self.coef = np.zeros(N_FEATURES)
        self.fitted = False

    def add(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Append labelled examples (the oldest fall out of the ring buffer).

        ``weight`` is each example's inverse probability of having been labelled, so the
        buffer stands for the whole stream the stage saw, not only what it deferred.
        """
        n = len(y)
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=float)
        stamp = self.count + np.arange(n, dtype=float)
        self.count += n
        keep = slice(-self.capacity, None)
        idx = (self.pos + np.arange(min(n, self.capacity))) % self.capacity
        self.x[idx] = x[keep]
        self.y[idx] = np.asarray(y, dtype=float)[keep]
        self.w[idx] = w[keep]
        self.stamp[idx] = stamp[keep]
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    @property
    def ready(self) -> bool:
        """Enough examples to fit."""
        return self.size >= self.min_examples

    def fit(self, steps: int = 6) -> None:
        """Damped Newton steps on the weighted, penalised log-loss, from the current fit."""
        if not self.ready:
            return
        age = self.count - 1 - self.stamp[: self.size]
        w = self.w[: self.size] * 0.5 ** (age / self.halflife)
        w = w * (self.size / w.sum())  # keep the penalty's strength relative to the data
        # One right and one wrong pseudo-example at the mean features (Laplace's rule):
        # a stage that was always right gets a high, finite P(correct), not certainty.
        mean = (w[:, None] * self.x[: self.size]).sum(axis=0) / w.sum()
        x = np.vstack([self.x[: self.size], mean, mean])
        y = np.concatenate([self.y[: self.size], [1.0, 0.0]])
        w = np.concatenate([w, [1.0, 1.0]])
        reg = np.full(N_FEATURES, max(self.l2, 1e-3))
        reg[0] = 1e-3  # the intercept is barely shrunk
        c = self.coef.copy()

        def loss(c: np.ndarray) -> float:
            z = x @ c
            return float((w * (np.logaddexp(0.0, z) - y * z)).sum() + 0.5 * (reg * c * c).sum())

        current = loss(c)
        for _ in range(steps):
            z = np.clip(x @ c, -30.0, 30.0)
            p = 1.0 / (1.0 + np.exp(-z))
            grad = x.T @ (w * (p - y)) + reg * c
            hess = (x * (w * p * (1.0 - p))[:, None]).T @ x + np.diag(reg)
            step = np.linalg.solve(hess, grad)
            t = 1.0
            while t > 1e-4:  # backtrack: Newton may overshoot where the data separate
                trial = c - t * step
                new = loss(trial)
                if np.isfinite(new) and new <= current:
                    break
                t *= 0.5
            else:
                break
            c, current = trial, new
            if float(np.abs(t * step).max()) < 1e-6:
                break
        if np.all(np.isfinite(c)):
            self.coef = c
            self.fitted = True

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(correct) per row; 0 until the head has been fitted (defer while unsure)."""
        if not self.fitted:
            return np.zeros(len(x))
        return 1.0 / (1.0 + np.exp(-np.clip(x @ self.coef, -30.0, 30.0)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.copy(),
            "y": self.y.copy(),
            "w": self.w.copy(),
            "stamp": self.stamp.copy(),
            "count": self.count,
            "size": self.size,
            "pos": self.pos,
            "coef": self.coef.copy(),
            "fitted": self.fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = np.array(state["x"], dtype=float)
        self.y = np.array(state["y"], dtype=float)
        self.w = np.array(state["w"], dtype=float)
        self.stamp = np.array(state["stamp"], dtype=float)
        self.capacity = len(self.y)
        self.count = int(state["count"])
        self.size = int(state["size"])
        self.pos = int(state["pos"])
        self.coef = np.array(state["coef"], dtype=float)
        self.fitted = bool(state["fitted"])


def learn_agreement(
    head: DeferralHead,
    tracker: AccuracyTracker,
    features: np.ndarray,
    predicted: np.ndarray,
    expert: np.ndarray,
    weights: np.ndarray,
) -> None:
    """One stage's head and tracker learn whether its answers agreed with the expert's."""
    correct = (predicted == expert).astype(float)
    head.add(features, correct, weights)
    tracker.update(predicted.tolist(), correct, weights)
    head.fit()


__all__ = [
    "AccuracyTracker",
    "DeferralHead",
    "head_features",
    "learn_agreement",
    "max_prob_from_features",
]
