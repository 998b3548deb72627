"""Every registered model kind passes every contract check that its tags call for.

To get a new model kind checked, add one case factory to ``CASES`` (or, for a kind that
needs a running server, a reason to ``NEEDS_SERVER``): a test fails for a built-in kind
that has neither.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

from tiered.checks import (
    CHECKS,
    EXAMPLE_RULES,
    TOY_CLASSES,
    ModelCase,
    check_model,
    check_rule_accept_mask,
    model_checks,
)
from tiered.core import AnswerBatch, Item, ModelTags
from tiered.core import spec as core_spec
from tiered.core.rules import DeferralRule, RuleContext, rule_kinds
from tiered.core.spec import BuildContext, build_model
from tiered.replay.log import ReplayLog
from tiered.replay.model import replay_items

CASES: dict[str, Callable[[], ModelCase]] = {}

# kinds that cannot be built offline, with the reason (each becomes an explicit xfail)
NEEDS_SERVER: dict[str, str] = {}


def case(kind: str) -> Callable[[Callable[[], ModelCase]], Callable[[], ModelCase]]:
    def deco(fn: Callable[[], ModelCase]) -> Callable[[], ModelCase]:
        CASES[kind] = fn
        return fn

    return deco


@case("hashed_ngram")
def _hashed() -> ModelCase:
    return ModelCase("hashed_ngram", lambda: build_model({"kind": "hashed_ngram"}))


@case("embedding")
def _embedding() -> ModelCase:
    # few, small batches: encoding is ~100 texts/s on a busy 2-core machine
    return ModelCase(
        "embedding",
        lambda: build_model({"kind": "embedding", "cache_size": 16}),
        n_items=9,
        stream_rounds=5,
        stream_batch=16,
    )


@case("label_column")
def _label_column() -> ModelCase:
    return ModelCase(
        "label_column", lambda: build_model({"kind": "label_column", "usd_per_call": 0.002})
    )


def _small_log(n: int = 30) -> ReplayLog:
    rng = np.random.default_rng(0)
    models = ["small", "big"]
    present = np.ones((n, 2), dtype=bool)
    present[3, 0] = False  # a query the small model has no output for
    answers = np.array([[str(x) for x in rng.choice(["A", "B"], 2)] for _ in range(n)], object)
    answers[3, 0] = None
    return ReplayLog(
        ids=[f"q{i}" for i in range(n)],
        models=models,
        present=present,
        quality=rng.integers(0, 2, size=(n, 2)).astype(float),
        cost=np.tile([1e-5, 1e-3], (n, 1)),
        latency_ms=np.tile([20.0, 300.0], (n, 1)),
        answers=answers,
        signals={"logprob": -rng.exponential(0.3, size=(n, 2))},
        inputs=[f"question {i}?" for i in range(n)],
    )


@case("replay")
def _replay() -> ModelCase:
    log = _small_log()
    pool = replay_items(log)

    def items(n: int, seed: int, classes: Sequence[str]) -> list[Item]:
        # fresh Item objects for the log's ids (a replay answers only ids it recorded)
        return [Item(id=pool[(seed + i) % len(pool)].id, input=pool[0].input) for i in range(n)]

    ctx = BuildContext(resources={"replay_log": log})
    return ModelCase(
        "replay", lambda: build_model({"kind": "replay", "model": "small"}, ctx), make_items=items
    )


_FAKE_LLM: list[Any] = []  # one OpenAI-compatible fake server on loopback for the session


def _toy_llm_responder(body: dict[str, Any]) -> dict[str, Any]:
    """A toy class picked by a hash of the text (deterministic), with top logprobs."""
    import zlib

    from tests._fake_openai import chat_body, prompt_text

    text = prompt_text(body).rsplit("Text:", 1)[-1]
    best = TOY_CLASSES[zlib.crc32(text.encode()) % len(TOY_CLASSES)]
    top = {c: (-0.2 if c == best else -2.0 - 0.5 * TOY_CLASSES.index(c)) for c in TOY_CLASSES}
    return chat_body(best, [(best, top[best], top)])


@case("openai")
def _openai() -> ModelCase:
    from tests._fake_openai import FakeOpenAI
    from tiered.models.openai_chat import OpenAIChat

    if not _FAKE_LLM:
        _FAKE_LLM.append(FakeOpenAI(_toy_llm_responder, record=False).__enter__())
    url = _FAKE_LLM[0].url
    return ModelCase(
        "openai",
        lambda: OpenAIChat(base_url=url, model="fake", api_key_env=None, labels=list(TOY_CLASSES)),
        n_items=8,
        stream_rounds=4,
        stream_batch=16,
    )


@case("llamacpp")
def _llamacpp() -> ModelCase:
    from tiered.models.llamacpp import LlamaCpp, LlamaCppSpec

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


def _builtin_kinds() -> dict[str, list[str]]:
    """Built-in kinds grouped by factory (aliases share one), first kind as the key."""
    core_spec.model_kinds()  # imports tiered.models
    groups: dict[Any, list[str]] = {}
    for kind, factory in sorted(core_spec._MODELS.items()):
        if factory.__module__.startswith("tiered."):  # not kinds that tests register
            groups.setdefault(factory, []).append(kind)
    return {kinds[0]: kinds for kinds in groups.values()}


def test_every_builtin_model_kind_has_a_contract_case() -> None:
    missing = [
        kinds
        for kinds in _builtin_kinds().values()
        if not any(k in CASES or k in NEEDS_SERVER for k in kinds)
    ]
    assert not missing, (
        f"model kinds {missing} have no case in tests/test_model_contracts.py: add a "
        "factory to CASES (or a reason to NEEDS_SERVER)"
    )


def _params() -> list[Any]:
    out = []
    for kind, make in CASES.items():
        c = make()
        for check in model_checks(c):
            reason = c.expected_failures.get(check.name)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            out.append(pytest.param(kind, check.name, id=f"{kind}-{check.name}", marks=marks))
    for kind, reason in NEEDS_SERVER.items():
        out.append(
            pytest.param(
                kind, "", id=f"{kind}-needs-server", marks=pytest.mark.xfail(reason=reason)
            )
        )
    return out


_BUILT: dict[str, ModelCase] = {}


@pytest.mark.parametrize(("kind", "check"), _params())
def test_model_contract(kind: str, check: str) -> None:
    if kind in NEEDS_SERVER:
        raise AssertionError(NEEDS_SERVER[kind])
    if kind not in _BUILT:
        _BUILT[kind] = CASES[kind]()
    CHECKS[check].run(_BUILT[kind])


def test_checks_are_chosen_from_tags() -> None:
    label_column = {c.name for c in model_checks(CASES["label_column"]())}
    hashed = {c.name for c in model_checks(CASES["hashed_ngram"]())}
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
# rule kinds without an example yet, with the reason (each becomes an explicit xfail)
RULES_WITHOUT_EXAMPLE: dict[str, str] = {}


def _rule_params() -> list[Any]:
    out = []
    for kind in sorted(set(rule_kinds()) | set(EXAMPLE_RULES)):
        reason = RULES_WITHOUT_EXAMPLE.get(kind)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(kind, id=kind, marks=marks))
    return out


@pytest.mark.parametrize("kind", _rule_params())
def test_rule_accept_mask_contract(kind: str) -> None:
    assert kind in EXAMPLE_RULES, (
        f"rule kind {kind!r} has no example in tiered.checks.EXAMPLE_RULES: add one "
        "(or a reason to RULES_WITHOUT_EXAMPLE in this file)"
    )
    rule = EXAMPLE_RULES[kind]()
    assert rule.kind == kind
    check_rule_accept_mask(rule)


def test_rule_check_catches_a_wrong_shape() -> None:
    class Half(DeferralRule):  # no default kind: not added to the rule registry
        def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
            return np.ones(len(answers) // 2, dtype=bool)

    with pytest.raises(AssertionError, match="shape"):
        check_rule_accept_mask(Half(kind="half"))
