"""Contract checks for deferral rules, run on the examples each rule class carries.

Every rule class lists examples of itself (``DeferralRule.examples()``); the project's
contract test runs :func:`check_rule` on the examples of every registered rule kind, so
a new rule kind is checked as soon as it is registered (and fails when it has none).
The checks run the rule on :func:`sample_answers`: a stage named ``s`` after an earlier
stage named ``cheap`` (examples that name stages use these names).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from tiered.checks.report import run_checks
from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.rules import RULES, DeferralRule, RuleContext, parse_rule
from tiered.errors import TieredError

CHECKED_STAGE = "s"
EARLIER_STAGE = "cheap"
_CLASSES = ("a", "b", "c")
_WORDS = ("apple", "river", "stone", "cloud", "music", "paper", "glass", "forest")


def sample_items(n: int, seed: int) -> list[Item]:
    """``n`` short texts of five common words (the items of :func:`sample_answers`)."""
    rng = np.random.default_rng(seed)
    return [Item(id=f"i{i}", input=" ".join(rng.choice(_WORDS, size=5))) for i in range(n)]


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
    earlier = {EARLIER_STAGE: [str(x) for x in rng.choice(list(classes), size=n)]}
    return answers, RuleContext(
        stage_name=CHECKED_STAGE, stage_index=1, items=sample_items(n, seed), earlier=earlier
    )


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


def check_rule_describe(rule: DeferralRule) -> None:
    """describe() is one non-empty line of text."""
    text = rule.describe()
    assert isinstance(text, str), f"{rule.kind}: describe() gave {type(text).__name__}"
    assert text.strip(), f"{rule.kind}: describe() is empty"
    assert "\n" not in text, f"{rule.kind}: describe() is not one line: {text!r}"


def check_rule_dict_round_trip(rule: DeferralRule) -> None:
    """to_dict() -> parse_rule gives the same rule kind and the same dict (cascade files)."""
    data = rule.to_dict()
    assert data.get("kind") == rule.kind, f"{rule.kind}: to_dict() has kind {data.get('kind')!r}"
    try:
        back = parse_rule(data)
    except (TieredError, ValueError) as exc:  # ValueError: pydantic's ValidationError
        raise AssertionError(f"{rule.kind}: its dict does not parse back: {exc}") from exc
    assert type(back) is type(rule), f"{rule.kind}: parsed back as {type(back).__name__}"
    assert back.to_dict() == data, f"{rule.kind}: {back.to_dict()} != {data}"


RULE_CHECKS: dict[str, Callable[[DeferralRule], None]] = {
    "accept_mask": check_rule_accept_mask,
    "describe": check_rule_describe,
    "dict_round_trip": check_rule_dict_round_trip,
}


def check_rule(
    rule: DeferralRule, expected_failures: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Run every rule check on ``rule``; returns ``{check: outcome}`` (see ``check_model``)."""
    runs = {name: functools.partial(fn, rule) for name, fn in RULE_CHECKS.items()}
    return run_checks(f"rule '{rule.kind}'", runs, expected_failures or {}, RULE_CHECKS)


def rule_examples(kind: str) -> list[DeferralRule]:
    """The examples the class of rule kind ``kind`` carries ([] for an unknown kind)."""
    cls = RULES.get(kind)
    return [] if cls is None else list(cls.examples())


__all__ = [
    "CHECKED_STAGE",
    "EARLIER_STAGE",
    "RULE_CHECKS",
    "check_rule",
    "check_rule_accept_mask",
    "check_rule_describe",
    "check_rule_dict_round_trip",
    "rule_examples",
    "sample_answers",
    "sample_items",
]
