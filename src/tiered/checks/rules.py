"""Contract checks for deferral rules: an accept mask of the right shape, every time.

Every registered rule kind needs an example in :data:`EXAMPLE_RULES`; a test fails for
a kind without one, so a new rule is checked as soon as it is registered.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.rules import (
    Agreement,
    AllOf,
    Always,
    AnyOf,
    DeferralRule,
    Never,
    Not,
    RuleContext,
    Threshold,
    Vote,
    Window,
)

if TYPE_CHECKING:
    from tiered.calibrate.learned import QualityEstimator

_CLASSES = ("a", "b", "c")
_WORDS = ("apple", "river", "stone", "cloud", "music", "paper", "glass", "forest")


def _sample_items(n: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [Item(id=f"i{i}", input=" ".join(rng.choice(_WORDS, size=5))) for i in range(n)]


@functools.cache
def example_estimator() -> QualityEstimator:
    """A small quality estimator for models ``cheap`` and ``s`` (the checked stage), fitted
    on a synthetic log where ``cheap`` is right when the query mentions an apple."""
    from tiered.replay.log import ReplayLog
    from tiered.calibrate.learned import QualityEstimator

    n = 120
    items = _sample_items(n, seed=99)
    rng = np.random.default_rng(99)
    easy = np.array(["apple" in it.text for it in items])
    quality = np.column_stack([easy | (rng.random(n) < 0.2), rng.random(n) < 0.85])
    answers = np.array([[str(x) for x in rng.choice(_CLASSES, size=2)] for _ in range(n)])
    log = ReplayLog(
        ids=[it.id for it in items],
        models=["cheap", "s"],
        present=np.ones((n, 2), dtype=bool),
        quality=quality.astype(float),
        cost=np.column_stack([np.full(n, 1e-4), np.full(n, 1e-3)]),
        latency_ms=np.full((n, 2), 10.0),
        answers=answers.astype(object),
        tasks=[None] * n,
        inputs=[it.text for it in items],
        references=[None] * n,
    )
    return QualityEstimator(folds=2, alphas=(1e-3,)).fit(log)


def _scorer() -> DeferralRule:
    from tiered.calibrate.learned import ScorerThreshold

    return ScorerThreshold(threshold=0.5).with_estimator(example_estimator())  # type: ignore[no-any-return]


def _exante_gate() -> DeferralRule:
    from tiered.calibrate.learned import ExAnteGate

    return ExAnteGate(threshold=0.5).with_estimator(example_estimator())  # type: ignore[no-any-return]


def _cascade_route() -> DeferralRule:
    from tiered.calibrate.learned import CascadeRoute

    rule = CascadeRoute(models=["cheap", "s"], lam=100.0)
    return rule.with_estimator(example_estimator())  # type: ignore[no-any-return]


EXAMPLE_RULES: dict[str, Callable[[], DeferralRule]] = {
    "always": Always,
    "never": Never,
    "threshold": lambda: Threshold(signal="max_prob", threshold=0.6),
    "window": lambda: Window(signal="logprob", lo=-1.0, hi=-0.2),
    "vote": lambda: Vote(min_share=0.6),
    "agreement": lambda: Agreement(stages=["cheap"]),
    "all_of": lambda: AllOf(rules=[Threshold(signal="margin", threshold=0.1), Vote(min_share=0.5)]),
    "any_of": lambda: AnyOf(rules=[Threshold(signal="entropy", threshold=0.9), Never()]),
    "not": lambda: Not(rule=Threshold(signal="logprob", threshold=-0.5)),
    # learned-quality rules (tiered.calibrate.learned): fitted on a small synthetic log
    "scorer": _scorer,
    "exante_gate": _exante_gate,
    "cascade_route": _cascade_route,
}


def sample_answers(n: int, seed: int = 0) -> tuple[AnswerBatch, RuleContext]:
    """Answers carrying every kind of signal (probs, samples, logprob), some labels None;
    the context has the items (text queries) and an earlier stage ``cheap``'s labels."""
    rng = np.random.default_rng(seed)
    classes = _CLASSES
    probs = rng.dirichlet(np.ones(3), size=n)
    labels: list[str | None] = [classes[j] for j in probs.argmax(axis=1)]
    for i in range(0, n, 4):
        labels[i] = None
    samples = [[str(x) for x in rng.choice(list(classes), size=5)] for _ in range(n)]
    logprob = -rng.exponential(0.5, size=n)
    logprob[1::5] = np.nan
    answers = AnswerBatch.from_labels(
        labels, probs=probs, classes=classes, samples=samples, signals={"logprob": logprob}
    )
    earlier = {"cheap": [str(x) for x in rng.choice(list(classes), size=n)]}
    items = _sample_items(n, seed)
    return answers, RuleContext(stage_name="s", stage_index=1, items=items, earlier=earlier)


def check_rule_accept_mask(rule: DeferralRule, n: int = 20) -> None:
    """The mask is bool, one entry per answer, never accepts a None label; empty works."""
    for size in (n, 0):
        answers, ctx = sample_answers(size)
        raw = np.asarray(rule.accept(answers, ctx))
        assert raw.shape == (size,), f"{rule.kind}: accept gave shape {raw.shape} != ({size},)"
        mask = rule(answers, ctx)
        assert isinstance(mask, np.ndarray), f"{rule.kind}: mask is {type(mask).__name__}"
        assert mask.dtype == bool, f"{rule.kind}: mask dtype {mask.dtype}"
        assert mask.shape == (size,), f"{rule.kind}: mask shape {mask.shape} != ({size},)"
        none = ~answers.answered
        assert not (mask & none).any(), f"{rule.kind}: accepted an answer that is None"


__all__ = ["EXAMPLE_RULES", "check_rule_accept_mask", "example_estimator", "sample_answers"]
