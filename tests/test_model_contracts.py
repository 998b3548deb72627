"""Every registered model kind and rule kind passes the contract checks (tiered.checks).

A model kind's class says how the checks build it (``contract_case()``); a kind that needs
a test fixture (a fake server on loopback, a local GGUF model) has its case in
``FIXTURES`` here instead. A rule kind's class carries examples of itself (``examples()``)
and every rule check runs on each. A registered kind with neither fails its test; a known
gap is an explicit ``{check: reason}`` expected failure, never a skip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

from tiered.checks import (
    CHECKS,
    RULE_CHECKS,
    TOY_CLASSES,
    ModelCase,
    check_model,
    check_rule,
    check_rule_accept_mask,
    contract_case,
    model_checks,
    rule_examples,
)
from tiered.core import AnswerBatch, Item, ModelTags
from tiered.core.rules import RULES, DeferralRule, RuleContext, rule_kinds
from tiered.core.spec import MODELS, model_kinds

# kinds whose case needs what only the test suite has (each made here, once per session)
FIXTURES: dict[str, Callable[[], ModelCase]] = {}

# known gaps of rule kinds: {kind: {check: reason}} (each an expected failure)
RULE_GAPS: dict[str, dict[str, str]] = {}


def fixture(kind: str) -> Callable[[Callable[[], ModelCase]], Callable[[], ModelCase]]:
    def deco(fn: Callable[[], ModelCase]) -> Callable[[], ModelCase]:
        FIXTURES[kind] = fn
        return fn

    return deco


def _own(obj: object) -> bool:
    """Registered by tiered or a plugin, not by this test suite."""
    return not getattr(obj, "__module__", "").startswith("tests.")


_FAKE_LLM: list[Any] = []  # one OpenAI-compatible fake server on loopback for the session


def _toy_llm_responder(body: dict[str, Any]) -> dict[str, Any]:
    """A toy class picked by a hash of the text (deterministic), with top logprobs."""
    import zlib

    from tiered.testing import chat_body, prompt_text

    text = prompt_text(body).rsplit("Text:", 1)[-1]
    best = TOY_CLASSES[zlib.crc32(text.encode()) % len(TOY_CLASSES)]
    top = {c: (-0.2 if c == best else -2.0 - 0.5 * TOY_CLASSES.index(c)) for c in TOY_CLASSES}
    return chat_body(best, [(best, top[best], top)])


@fixture("openai")
def _openai() -> ModelCase:
    from tiered.models.llm.openai_chat import OpenAIChat
    from tiered.testing import FakeUpstream

    if not _FAKE_LLM:
        _FAKE_LLM.append(FakeUpstream(_toy_llm_responder, record=False).start_in_thread())
    url = _FAKE_LLM[0].base_url
    return ModelCase(
        "openai",
        lambda: OpenAIChat(base_url=url, model="fake", api_key_env=None, labels=list(TOY_CLASSES)),
        n_items=8,
        stream_rounds=4,
        stream_batch=16,
    )


@fixture("llamacpp")
def _llamacpp() -> ModelCase:
    from tiered.models.llm.llamacpp import LlamaCpp, LlamaCppSpec

    # Gemma 3 270M, loaded once for every instance (shared engine); few small batches
    spec = LlamaCppSpec(
        labels=list(TOY_CLASSES),
        template="Headline: {input}\nTopic:",
        demos=[
            {"input": "team wins the cup final after a late goal", "label": "sports"},
            {"input": "stocks rally as investors cheer earnings", "label": "markets"},
            {"input": "storm brings heavy rain and wind", "label": "weather"},
        ],
        n_ctx=512,
        n_threads=1,
    )
    return ModelCase("llamacpp", lambda: LlamaCpp(spec), n_items=6, stream_rounds=3, stream_batch=4)


def _model_kinds() -> dict[str, list[str]]:
    """Registered model kinds grouped by factory (aliases share one), first kind as key."""
    groups: dict[Any, list[str]] = {}
    for kind in model_kinds():
        factory = MODELS.get(kind)
        if _own(factory):
            groups.setdefault(factory, []).append(kind)
    return {kinds[0]: kinds for kinds in groups.values()}


def _case_maker(kinds: list[str]) -> Callable[[], ModelCase] | None:
    for kind in kinds:
        if contract_case(kind) is not None:
            return lambda kind=kind: contract_case(kind)  # type: ignore[misc, return-value]
        if kind in FIXTURES:
            return FIXTURES[kind]
    return None


def test_every_model_kind_has_a_contract_case() -> None:
    missing = [kinds for kinds in _model_kinds().values() if _case_maker(kinds) is None]
    assert not missing, (
        f"model kinds {missing} have no contract case: give the model class a "
        "contract_case() classmethod (tiered.checks.HasContractCase)"
    )


def test_fixtures_are_only_for_kinds_whose_class_has_no_case() -> None:
    both = [kind for kind in FIXTURES if contract_case(kind) is not None]
    assert not both, f"{both} have a contract_case(): remove them from FIXTURES"
    assert {"hashed_ngram", "embedding", "label_column", "replay"} <= {
        kind for kind in model_kinds() if contract_case(kind) is not None
    }


_BUILT: dict[str, ModelCase] = {}


def _case(kind: str) -> ModelCase:
    if kind not in _BUILT:
        make = _case_maker(_model_kinds()[kind])
        assert make is not None, f"model kind {kind!r} has no contract case"
        _BUILT[kind] = make()
    return _BUILT[kind]


def _params() -> list[Any]:
    out = []
    for kind, kinds in _model_kinds().items():
        if _case_maker(kinds) is None:
            continue  # test_every_model_kind_has_a_contract_case fails for it
        c = _case(kind)
        for check in model_checks(c):
            reason = c.expected_failures.get(check.name)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            out.append(pytest.param(kind, check.name, id=f"{kind}-{check.name}", marks=marks))
    return out


@pytest.mark.parametrize(("kind", "check"), _params())
def test_model_contract(kind: str, check: str) -> None:
    CHECKS[check].run(_case(kind))


def test_checks_are_chosen_from_tags() -> None:
    label_column = {c.name for c in model_checks(_case("label_column"))}
    hashed = {c.name for c in model_checks(_case("hashed_ngram"))}
    assert "probabilities" not in label_column and "state_round_trip" not in label_column
    assert {"probabilities", "state_round_trip", "label_set_grows"} <= hashed
    assert "apredict_matches_predict" not in hashed  # not asynchronous


# ---------------------------------------------------------- the checks can fail
class Tally:
    """A correct learning model (class frequencies); ``bug`` breaks one contract."""

    tags = ModelTags(gives_probabilities=True, learns_online=True)
    shared: ClassVar[Counter[str]] = Counter()

    def __init__(self, bug: str | None = None) -> None:
        self.name = "tally"
        self.bug = bug
        self.counts: Counter[str] = Tally.shared if bug == "shared" else Counter()
        self.kept: list[Item] = []

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        classes = tuple(self.counts)
        n, total = len(items), sum(self.counts.values())
        row = np.array([self.counts[c] / total for c in classes]) if total else np.zeros(0)
        probs = np.tile(row, (n, 1)).reshape(n, len(classes))
        if self.bug == "probs" and classes:
            probs = probs * 2
        labels = [max(classes, key=self.counts.__getitem__) if classes else None] * n
        if self.bug == "short" and n:
            labels, probs = labels[1:], probs[1:]
        return AnswerBatch.from_labels(labels, probs=probs, classes=classes)

    def learn(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        self.counts.update(labels)
        if self.bug == "mutate" and items:
            items[0].fields["label"] = "changed"
        if self.bug == "hoard":
            self.kept.extend(items)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = Counter(state["counts"])


def _tally_case(bug: str | None = None, **kw: Any) -> ModelCase:
    Tally.shared.clear()
    return ModelCase("tally", lambda: Tally(bug), **kw)


def test_a_correct_model_passes_every_check() -> None:
    report = check_model(_tally_case())
    assert set(report) == {c.name for c in model_checks(_tally_case())}
    assert set(report.values()) == {"passed"}


@pytest.mark.parametrize(
    ("bug", "check"),
    [
        ("short", "predict_one_answer_per_item"),
        ("probs", "probabilities"),
        ("mutate", "learning_leaves_input_alone"),
        ("hoard", "learning_keeps_no_text"),
        ("hoard", "bounded_memory"),
        ("shared", "instances_independent"),
    ],
)
def test_each_check_catches_its_bug(bug: str, check: str) -> None:
    case = _tally_case(bug)
    with pytest.raises(AssertionError):
        CHECKS[check].run(case)
    with pytest.raises(AssertionError, match=check):
        check_model(case)


def test_missing_state_dict_is_a_failure() -> None:
    class NoState(Tally):
        def __getattribute__(self, name: str) -> Any:
            if name in ("state_dict", "load_state_dict"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(AssertionError, match="state_dict"):
        CHECKS["state_round_trip"].run(ModelCase("nostate", NoState))


def test_known_gap_is_an_expected_failure_and_a_stale_one_is_reported() -> None:
    gap = {"learning_keeps_no_text": "keeps items for a replay buffer"}
    report = check_model(_tally_case("hoard", expected_failures=gap, memory_slack_bytes=10**9))
    assert report["learning_keeps_no_text"] == "xfail: keeps items for a replay buffer"
    with pytest.raises(AssertionError, match="passes, but is listed as a known gap"):
        check_model(_tally_case(expected_failures=gap))
    with pytest.raises(ValueError, match="unknown checks"):
        check_model(_tally_case(expected_failures={"no_such_check": "x"}))


# -------------------------------------------------------------------- rules
def _rule_kinds() -> list[str]:
    return [kind for kind in rule_kinds() if _own(RULES.get(kind))]


def _rule_params() -> list[Any]:
    out = []
    for kind in _rule_kinds():
        for check in RULE_CHECKS:
            reason = RULE_GAPS.get(kind, {}).get(check)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            out.append(pytest.param(kind, check, id=f"{kind}-{check}", marks=marks))
    return out


@pytest.mark.parametrize(("kind", "check"), _rule_params())
def test_rule_contract(kind: str, check: str) -> None:
    examples = rule_examples(kind)
    assert examples, (
        f"rule kind {kind!r} has no examples: give its class an examples() classmethod "
        "returning a few instances"
    )
    for rule in examples:
        assert rule.kind == kind, f"an example of {kind!r} has kind {rule.kind!r}"
        RULE_CHECKS[check](rule)


def test_every_builtin_rule_kind_is_checked() -> None:
    assert {"threshold", "agreement", "scorer", "exante_gate", "cascade_route"} <= set(
        _rule_kinds()
    )


class _Half(DeferralRule):  # no default kind: not added to the rule registry
    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return np.ones(len(answers) // 2, dtype=bool)


class _Chatty(DeferralRule):
    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return np.ones(len(answers), dtype=bool)

    def describe(self) -> str:
        return "accepts\neverything"


def test_rule_checks_catch_their_bugs() -> None:
    with pytest.raises(AssertionError, match="shape"):
        check_rule_accept_mask(_Half(kind="half"))
    with pytest.raises(AssertionError, match=r"describe: .*not one line"):
        check_rule(_Chatty(kind="chatty"))
    # not registered under its kind: parsing its dict back cannot give it again
    with pytest.raises(AssertionError, match=r"dict_round_trip: .*unknown rule kind 'chatty'"):
        check_rule(_Chatty(kind="chatty"), {"describe": "says it in two lines"})


def test_rule_known_gap_is_an_expected_failure() -> None:
    report = check_rule(_Chatty(kind="chatty"), {"describe": "x", "dict_round_trip": "y"})
    assert report == {
        "accept_mask": "passed",
        "describe": "xfail: x",
        "dict_round_trip": "xfail: y",
    }
    with pytest.raises(AssertionError, match="passes, but is listed as a known gap"):
        check_rule(rule_examples("vote")[0], {"describe": "stale"})
