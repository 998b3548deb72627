from __future__ import annotations

import numpy as np
import pytest

from tiered.core import (
    Agreement,
    AllOf,
    AnswerBatch,
    AnyOf,
    Cascade,
    DeferralRule,
    Item,
    Never,
    Not,
    RuleContext,
    Stage,
    Threshold,
    Vote,
    Window,
    parse_rule,
)
from tiered.core.signals import entropy, margin, max_prob, read_signal, vote_share
from tiered.errors import ConfigError, SignalMissingError

from .conftest import FakeModel

CTX = RuleContext(stage_name="s", stage_index=0)


def _batch(**signals: list[float]) -> AnswerBatch:
    n = len(next(iter(signals.values())))
    return AnswerBatch.from_labels(["x"] * n, signals={k: np.array(v) for k, v in signals.items()})


def test_threshold_accepts_at_or_above_and_defers_missing() -> None:
    a = _batch(logprob=[-0.1, -0.5, -0.3, np.nan])
    assert Threshold(signal="logprob", threshold=-0.3)(a, CTX).tolist() == [
        True,
        False,
        True,
        False,
    ]


def test_threshold_on_entropy_accepts_below() -> None:
    probs = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33]])
    a = AnswerBatch.from_labels(["a", "a"], probs=probs, classes=("a", "b", "c"))
    assert Threshold(signal="entropy", threshold=0.5)(a, CTX).tolist() == [True, False]
    assert Threshold(signal="entropy", threshold=0.5, direction="above")(a, CTX).tolist() == [
        False,
        True,
    ]


def test_probability_signals() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    a = AnswerBatch.from_labels(["a", "a"], probs=probs, classes=("a", "b", "c"))
    assert max_prob(a) == pytest.approx([0.7, 0.5])
    assert margin(a) == pytest.approx([0.5, 0.0])
    assert entropy(a)[1] == pytest.approx(np.log(2))


def test_window_passes_on_only_the_band() -> None:
    a = _batch(score=[0.1, 0.4, 0.5, 0.6, 0.9, np.nan])
    assert Window(signal="score", lo=0.4, hi=0.6)(a, CTX).tolist() == [
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="lo <= hi"):
        Window(signal="score", lo=0.7, hi=0.6)


def test_vote_share_of_majority() -> None:
    samples = [["A", "A", "B"], ["C", "C", "C"], ["A", "B", "C", "D"]]
    assert vote_share(samples) == pytest.approx([2 / 3, 1.0, 0.25])
    a = AnswerBatch.from_labels(["A", "C", "A"], samples=samples)
    assert Vote(min_share=0.6)(a, CTX).tolist() == [True, True, False]


def test_missing_signal_names_what_is_available() -> None:
    a = _batch(logprob=[0.0])
    with pytest.raises(SignalMissingError, match="available: logprob"):
        read_signal(a, "margin")


def test_agreement_between_stages() -> None:
    items = [Item(str(i), "t") for i in range(4)]
    first = FakeModel("first", lambda it: ["a", "b", "c", "d"][int(it.id)])
    second = FakeModel("second", lambda it: ["A ", "x", "c", "y"][int(it.id)])
    third = FakeModel("third", lambda it: "z")
    cascade = Cascade(
        [
            Stage("first", first, Never()),
            Stage("second", second, Agreement()),
            Stage("third", third),
        ]
    )
    result = cascade.run(items)
    assert result.labels == ["A ", "z", "c", "z"]
    assert result.stage_share() == {"first": 0.0, "second": 0.5, "third": 0.5}


def test_agreement_naming_a_later_stage_is_a_config_error() -> None:
    a = AnswerBatch.from_labels(["x"])
    with pytest.raises(ConfigError, match="not earlier stages"):
        Agreement(stages=["nope"])(a, RuleContext("s", 1, earlier={"first": ["x"]}))


def test_composition() -> None:
    a = _batch(p=[0.9, 0.9, 0.1, 0.1], q=[0.9, 0.1, 0.9, 0.1])
    tp, tq = Threshold(signal="p", threshold=0.5), Threshold(signal="q", threshold=0.5)
    assert AllOf(rules=[tp, tq])(a, CTX).tolist() == [True, False, False, False]
    assert AnyOf(rules=[tp, tq])(a, CTX).tolist() == [True, True, True, False]
    assert Not(rule=tp)(a, CTX).tolist() == [False, False, True, True]


def test_rules_round_trip_through_dicts() -> None:
    rule = AnyOf(
        rules=[
            Threshold(signal="logprob", threshold=-0.2),
            AllOf(rules=[Window(signal="score", lo=0.2, hi=0.8), Agreement(stages=["a"])]),
            Not(rule=Vote(min_share=0.6)),
        ]
    )
    d = rule.to_dict()
    assert d["rules"][1]["rules"][0] == {"kind": "window", "signal": "score", "lo": 0.2, "hi": 0.8}
    assert parse_rule(d) == rule


def test_unknown_rule_kind_lists_known_kinds() -> None:
    with pytest.raises(ConfigError, match=r"unknown rule kind 'magic'; known kinds: .*threshold"):
        parse_rule({"kind": "magic"})


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (Threshold(signal="logprob", threshold=-0.2134), "logprob >= -0.2134"),
        (Threshold(signal="entropy", threshold=0.5), "entropy <= 0.5"),
        (Threshold(signal="score", threshold=0.5, direction="below"), "score <= 0.5"),
        (Window(signal="margin", lo=0.1, hi=0.3), "margin outside [0.1, 0.3]"),
        (Vote(min_share=2 / 3), "vote >= 0.667"),
        (Agreement(stages=["a", "b"], min_agree=2), "agrees with 2 of a, b"),
        (Agreement(extract="final_number"), "agrees with an earlier stage (final number)"),
        (
            AnyOf(rules=[Never(), Not(rule=Vote(min_share=0.5))]),
            "never (feeds agreement) or not (vote >= 0.5)",
        ),
    ],
)
def test_rules_describe_themselves_in_one_line(rule: DeferralRule, text: str) -> None:
    assert rule.describe() == text


def test_a_rule_without_its_own_description_lists_its_parameters() -> None:
    class Tilt(DeferralRule):  # no default kind: stays out of the registry
        lean: float = 0.0

        def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
            return np.ones(len(answers), dtype=bool)

    assert Tilt(kind="tilt").describe() == "tilt"
    assert Tilt(kind="tilt", lean=0.3).describe() == "tilt lean=0.3"
