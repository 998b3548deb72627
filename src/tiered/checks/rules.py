"""Contract checks for deferral rules: an accept mask of the right shape, every time.

Every registered rule kind needs an example in :data:`EXAMPLE_RULES`; a test fails for
a kind without one, so a new rule is checked as soon as it is registered.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tiered.core.answers import AnswerBatch
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
}


def sample_answers(n: int, seed: int = 0) -> tuple[AnswerBatch, RuleContext]:
    """Answers carrying every kind of signal (probs, samples, logprob), some labels None."""
    rng = np.random.default_rng(seed)
    classes = ("a", "b", "c")
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
    return answers, RuleContext(stage_name="s", stage_index=1, earlier=earlier)


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


__all__ = ["EXAMPLE_RULES", "check_rule_accept_mask", "sample_answers"]
