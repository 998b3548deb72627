"""Several cheap stages: what a later stage's deferral head learns from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tiered.core import AnswerBatch, FixedCost, Item, ModelTags, Stage
from tiered.online import OnlineCascade, OnlineConfig


class _Oracle:
    """Knows the label and is sure of it (``sure``), or guesses with a flat distribution."""

    tags = ModelTags(gives_probabilities=True)

    def __init__(self, right: bool) -> None:
        self.right = right

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        classes = ("a", "b")
        truth = [str(it.fields["label"]) for it in items]
        if self.right:
            labels = truth
            probs = np.array([[0.99, 0.01] if y == "a" else [0.01, 0.99] for y in truth])
        else:  # always the wrong label, rather confidently
            labels = ["b" if y == "a" else "a" for y in truth]
            probs = np.array([[0.1, 0.9] if y == "a" else [0.9, 0.1] for y in truth])
        return AnswerBatch.from_labels(labels, probs=probs, classes=classes)


class _Column:
    tags = ModelTags()

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        return AnswerBatch.from_labels([str(it.fields["label"]) for it in items])


def _items(n: int) -> list[Item]:
    rng = np.random.default_rng(0)
    return [Item(str(i), f"t{i}", {"label": "ab"[int(rng.integers(2))]}) for i in range(n)]


def test_later_head_learns_only_from_items_earlier_stages_would_pass_on() -> None:
    # Stage 1 is always right and sure: after warm-up it answers every item, so the
    # items stage 2 still sees (exploration sends many up) are ones stage 1 would have
    # answered. Stage 2's head must not learn from them: they say nothing about the
    # items stage 2 would really be asked about.
    warmup = 60
    cfg = OnlineConfig(mu=0.2, warmup=warmup, exploration_beta=0.999, audit_rate=0.0)
    cheap = [Stage("first", _Oracle(right=True)), Stage("second", _Oracle(right=False))]
    expert = Stage("expert", _Column(), cost=FixedCost(usd_per_call=0.01))
    oc = OnlineCascade(cheap, expert, cfg, seed=0)
    out: list = []
    items = _items(3000)
    for i in range(0, len(items), 100):
        out.extend(oc.process(items[i : i + 100]))
    explored = sum(d.explored for d in out[warmup:])
    assert explored > 300  # plenty of labelled items after the warm-up
    assert all(d.stage == "first" for d in out[warmup:] if not d.explored)
    assert oc.heads[0].count >= warmup + explored
    assert oc.heads[1].count <= warmup + 40  # warm-up (first head not yet fitted) only
