"""Small, fast stand-ins for the online tests: a learnable naive Bayes stage and
label-column experts (sync and async) that count their calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered.core import AnswerBatch, Item, ModelTags


class NaiveBayes:
    """Multinomial naive Bayes over whitespace tokens; the label set grows as it learns."""

    tags = ModelTags(gives_probabilities=True, learns_online=True)

    def __init__(self, name: str = "nb", alpha: float = 0.5) -> None:
        self.name = name
        self.alpha = alpha
        self.classes: list[str] = []
        self.class_count: dict[str, float] = {}
        self.word_count: dict[str, dict[str, float]] = {}
        self.total: dict[str, float] = {}
        self.learned = 0

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        n, k = len(items), len(self.classes)
        if k == 0:
            return AnswerBatch.from_labels([None] * n)
        vocab = max(len(self.word_count), 1)
        logp = np.zeros((n, k))
        prior = np.array([self.class_count[c] for c in self.classes])
        logp += np.log(prior / prior.sum())
        for i, it in enumerate(items):
            for w in it.text.split():
                counts = self.word_count.get(w)
                for j, c in enumerate(self.classes):
                    hit = counts.get(c, 0.0) if counts else 0.0
                    logp[i, j] += np.log((hit + self.alpha) / (self.total[c] + self.alpha * vocab))
        logp -= logp.max(axis=1, keepdims=True)
        probs = np.exp(logp)
        probs /= probs.sum(axis=1, keepdims=True)
        labels = [self.classes[j] for j in probs.argmax(axis=1)]
        return AnswerBatch.from_labels(labels, probs=probs, classes=tuple(self.classes))

    def learn(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        for it, y in zip(items, labels, strict=True):
            if y not in self.class_count:
                self.classes.append(y)
                self.class_count[y] = 0.0
                self.total[y] = 0.0
            self.class_count[y] += 1.0
            for w in it.text.split():
                self.word_count.setdefault(w, {})
                self.word_count[w][y] = self.word_count[w].get(y, 0.0) + 1.0
                self.total[y] += 1.0
            self.learned += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "class_count": dict(self.class_count),
            "word_count": {w: dict(c) for w, c in self.word_count.items()},
            "total": dict(self.total),
            "learned": self.learned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.class_count = dict(state["class_count"])
        self.word_count = {w: dict(c) for w, c in state["word_count"].items()}
        self.total = dict(state["total"])
        self.learned = int(state["learned"])


class Column:
    """The expert: the item's ``label`` field. Counts calls and items asked."""

    tags = ModelTags()

    def __init__(self, name: str = "column") -> None:
        self.name = name
        self.calls = 0
        self.asked = 0

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.calls += 1
        self.asked += len(items)
        return AnswerBatch.from_labels([str(it.fields["label"]) for it in items])


class AsyncColumn(Column):
    tags = ModelTags(asynchronous=True)

    def __init__(self) -> None:
        super().__init__("async_column")
        self.async_calls = 0

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        self.async_calls += 1
        return self.predict(items)


def topic_stream(
    n: int, *, seed: int, labels: Sequence[str] = ("a", "b"), noise: float = 0.1, start: int = 0
) -> list[Item]:
    """Texts whose words mostly belong to their label's vocabulary.

    Label ``x`` draws words ``x0 .. x19``; a share ``noise`` of the words come from
    another label's vocabulary, so the stream is learnable but not trivially.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = labels[int(rng.integers(len(labels)))]
        words = []
        for _ in range(6):
            src = y if rng.random() > noise else labels[int(rng.integers(len(labels)))]
            words.append(f"{src}{int(rng.integers(20))}")
        out.append(Item(id=str(start + i), input=" ".join(words), fields={"label": y}))
    return out
