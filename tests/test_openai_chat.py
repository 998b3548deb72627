"""OpenAIChat against the fake OpenAI-compatible server on 127.0.0.1 (tiered.testing)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tiered.core import Cascade, Item, RuleContext, Stage, Threshold, build_model
from tiered.core.spec import BuildContext
from tiered.errors import (
    BudgetExceededError,
    ConfigError,
    DataError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tiered.models.llm import (
    Budget,
    OpenAIChat,
    normalize_casefold,
    normalize_choice,
    normalize_number,
    resolve_normalizer,
)
from tiered.store.response_cache import ResponseCache
from tiered.testing import (
    FakeUpstream,
    Reply,
    chat_body,
    completion_body,
    prompt_text,
    sentiment_responder,
)

SENTIMENT: dict[str, Any] = {
    "model": "fake-model",
    "api_key_env": None,
    "labels": ["fresh", "rotten"],
    "words": {"fresh": "positive", "rotten": "negative"},
    "backoff_s": 0.001,
    "backoff_max_s": 0.01,
}
GEN: dict[str, Any] = {"mode": "generate", "labels": [], "words": {}}
ITEMS = [Item("a", "a good film"), Item("b", "a bad film"), Item("c", "a film about fruit")]


@pytest.fixture
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream(sentiment_responder) as srv:
        yield srv


def make(srv: FakeUpstream, **kw: Any) -> OpenAIChat:
    return OpenAIChat(**{**SENTIMENT, "base_url": srv.base_url, **kw})


def predict(model: OpenAIChat, items: list[Item]) -> Any:
    try:
        return model.predict(items)
    finally:
        model.close()


# ------------------------------------------------------------------ classification


def test_classify_label_probabilities_from_chat_top_logprobs(server: FakeUpstream) -> None:
    a = predict(make(server), ITEMS)
    assert a.labels == ["fresh", "rotten", None]  # "Banana" is outside the set: defer
    assert a.classes == ("fresh", "rotten")
    p_fresh = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.4))
    np.testing.assert_allclose(a.probs[0], [p_fresh, 1 - p_fresh])
    np.testing.assert_allclose(a.probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(a.probs[2], [0.5, 0.5])  # no label token in the top list
    np.testing.assert_allclose(a.signals["logprob"][:2], [-0.1, -0.2])
    assert math.isnan(a.signals["logprob"][2])
    body = server.seen[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 10 and body["temperature"] == 0
    assert "positive, negative" in body["messages"][0]["content"]


def test_classify_completions_endpoint_skips_a_leading_blank_token() -> None:
    def responder(body: dict[str, Any]) -> dict[str, Any]:
        # the answer's first token is a newline; the label token comes second
        tokens = [
            ("\n", -0.01, {"\n": -0.01, " ": -5.0}),
            ("Neg", -0.3, {"Neg": -0.3, "neg": -2.0, "Pos": -1.6, "Ne": -4.0}),
            ("ative", -0.01, {"ative": -0.01}),
        ]
        return completion_body("\nNegative", tokens)

    with FakeUpstream(responder) as srv:
        a = predict(make(srv, endpoint="completions"), ITEMS[:1])
        body = srv.seen[0].body
    assert a.labels == ["rotten"]
    # "Ne" begins only "negative": it counts too
    neg, pos = math.exp(-0.3) + math.exp(-2.0) + math.exp(-4.0), math.exp(-1.6)
    np.testing.assert_allclose(a.probs[0], [pos / (pos + neg), neg / (pos + neg)])
    assert body["logprobs"] == 10 and body["stop"] == ["\n"] and "prompt" in body


def test_classify_without_logprobs_uses_k_sample_votes() -> None:
    answers = iter(["positive", "Positive.", "negative", "positive", "I don't know"])

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        return chat_body(next(answers))  # no logprobs at all

    with FakeUpstream(responder) as srv:
        m = make(srv, samples=5, max_concurrency=1)
        a = predict(m, ITEMS[:1])
        seeds = sorted(s.body["seed"] for s in srv.seen)
        temps = {s.body["temperature"] for s in srv.seen}
    assert a.labels == ["fresh"]
    np.testing.assert_allclose(a.probs[0], [0.75, 0.25])  # votes over in-set answers
    assert a.signals["vote"][0] == pytest.approx(3 / 5)
    assert a.samples == [["fresh", "fresh", "rotten", "fresh", ""]]
    assert seeds == [0, 1, 2, 3, 4] and temps == {0.7}
    assert m.tags.stochastic


def test_classify_without_logprobs_or_samples_gives_no_probabilities() -> None:
    with FakeUpstream(lambda body: chat_body("negative")) as srv:
        a = predict(make(srv, logprobs=False), ITEMS[:2])
        assert "logprobs" not in srv.seen[0].body
    assert a.labels == ["rotten", "rotten"] and a.probs is None


# ------------------------------------------------------------------ generation


def test_generate_logprob_aggregates_and_number_normaliser() -> None:
    tokens = [("The", -0.5, {}), (" answer", -0.1, {}), (" is", -0.2, {}), (" 1,200", -1.2, {})]
    with FakeUpstream(lambda body: chat_body("The answer is 1,200.", tokens)) as srv:
        m = make(srv, **GEN, normalizer="number")
        a = predict(m, [Item("q", "How many?")])
        body = srv.seen[0].body
    lps = np.array([-0.5, -0.1, -0.2, -1.2])
    assert a.labels == ["1200"] and a.extra["text"] == ["The answer is 1,200."]
    assert a.signals["logprob_sum"][0] == pytest.approx(lps.sum())
    assert a.signals["logprob"][0] == pytest.approx(lps.sum())
    assert a.signals["logprob_mean"][0] == pytest.approx(lps.mean())
    assert a.signals["logprob_min"][0] == pytest.approx(-1.2)
    assert a.signals["logprob_q10"][0] == pytest.approx(np.quantile(lps, 0.1))
    assert body["messages"] == [{"role": "user", "content": "How many?"}]
    assert "top_logprobs" not in body and m.tags.generates_text


def test_generate_chat_input_is_sent_as_given(server: FakeUpstream) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    predict(make(server, **GEN, system="Be brief."), [Item("x", msgs)])
    assert server.seen[0].body["messages"] == [{"role": "system", "content": "Be brief."}, *msgs]


def test_generate_honours_the_callers_generation_parameters(server: FakeUpstream) -> None:
    asked = {"max_tokens": 500, "temperature": 0.9, "top_p": 0.5, "stop": ["END"], "seed": 7}
    predict(make(server, **GEN, max_tokens=64), [Item("x", "hi", params=asked)])
    body = server.seen[0].body
    assert body["max_tokens"] == 64  # the stage's max_tokens is the operator's ceiling
    assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (
        0.9,
        0.5,
        ["END"],
        7,
    )

    predict(make(server, **GEN), [Item("y", "hi", params={"max_tokens": 500})])
    assert server.seen[1].body["max_tokens"] == 500  # no ceiling set: the caller's bound
    prices = {"usd_per_output_token": 1e-3}
    stage = make(server, **GEN, prices=prices)
    try:
        small = stage.worst_case_cost([Item("z", "hi", params={"max_tokens": 4})])
        large = stage.worst_case_cost([Item("z", "hi", params={"max_tokens": 400})])
    finally:
        stage.close()
    assert small == pytest.approx(4e-3) and large == pytest.approx(0.4)


def test_classify_ignores_the_callers_generation_parameters(server: FakeUpstream) -> None:
    predict(make(server), [Item("x", "a good film", params={"max_tokens": 500, "stop": ["x"]})])
    body = server.seen[0].body
    assert body["max_tokens"] == 8 and "stop" not in body and body["temperature"] == 0.0


def test_k_sample_agreement_votes_after_normalising() -> None:
    replies = {0: "(B)", 1: "The answer is b", 2: "B.", 3: "C"}

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        return chat_body(replies[body["seed"]])

    with FakeUpstream(responder) as srv:
        m = make(srv, **GEN, samples=4, normalizer="choice")
        a = predict(m, [Item("q", "Pick one")])
    assert a.labels == ["B"]
    assert a.samples == [["B", "B", "B", "C"]]
    assert a.signals["vote"][0] == pytest.approx(0.75)


def test_samples_via_n_make_one_request() -> None:
    with FakeUpstream(lambda body: chat_body("42", n=body.get("n", 1))) as srv:
        m = make(srv, **GEN, samples=3, sample_mode="n", normalizer="number")
        a = predict(m, [Item("q", "?")])
        assert srv.calls == 1 and srv.seen[0].body["n"] == 3
    assert a.samples == [["42", "42", "42"]] and a.signals["vote"][0] == 1.0


# ------------------------------------------------------------------ verify


def test_verify_signal_is_one_when_two_prompt_variants_agree() -> None:
    def responder(body: dict[str, Any]) -> dict[str, Any]:
        text = prompt_text(body)
        if text.startswith("PoT"):  # the second variant disagrees on item 2
            return chat_body("13" if "item2" in text else "x = 12\nprint(x)  # 12")
        return chat_body("Let me think... so the answer is 12.")

    with FakeUpstream(responder) as srv:
        m = make(
            srv,
            **GEN,
            normalizer="number",
            prompt="CoT: {input}",
            verify_prompt="PoT: {input}",
        )
        items = [Item("1", "item1"), Item("2", "item2")]
        a = predict(m, items)
        assert srv.calls == 4
    assert a.labels == ["12", "12"]
    np.testing.assert_array_equal(a.signals["verify"], [1.0, 0.0])
    rule = Threshold(signal="verify", threshold=1)
    np.testing.assert_array_equal(rule(a, RuleContext("llm", 0, items)), [True, False])


def test_verify_in_a_cascade_passes_disagreements_on(fake_model: Any) -> None:
    def responder(body: dict[str, Any]) -> dict[str, Any]:
        text = prompt_text(body)
        flip = text.startswith("B:") and "good film" in text
        return chat_body("negative" if flip else ("positive" if "good" in text else "negative"))

    expert = fake_model("expert", lambda it: "fresh", cost=10.0)
    with FakeUpstream(responder) as srv:
        llm = make(srv, prompt="A: {input}", verify_prompt="B: {input}", logprobs=False)
        cascade = Cascade(
            [
                Stage("llm", llm, rule=Threshold(signal="verify", threshold=1)),
                Stage("expert", expert),
            ]
        )
        try:
            res = cascade.run([Item("1", "a good film"), Item("2", "a bad one")])
        finally:
            llm.close()
    assert [d.stage for d in res] == ["expert", "llm"]
    assert expert.seen == ["1"]


# ------------------------------------------------------------------ retries and errors


def test_retries_429_500_and_malformed_json_then_succeeds(server: FakeUpstream) -> None:
    server.then(
        Reply(429, headers={"retry-after": "0"}),
        Reply(500, {"error": {"message": "boom"}}),
        Reply(200, "{not json"),
        Reply(200, {"choices": "nope"}),
    )
    m = make(server, max_concurrency=1)
    a = predict(m, ITEMS[:1])
    assert a.labels == ["fresh"]
    assert server.calls == 5 and m.calls == 5


def test_retries_exhausted_raise_a_tiered_error_naming_the_status(server: FakeUpstream) -> None:
    server.then(*[Reply(429, {"error": {"message": "slow down"}})] * 3)
    m = make(server, max_retries=2)
    with pytest.raises(RateLimitError, match=r"HTTP 429: slow down.*after 3 attempts") as info:
        predict(m, ITEMS[:1])
    assert info.value.status == 429 and info.value.retryable
    assert server.calls == 3


def test_client_errors_are_not_retried(server: FakeUpstream) -> None:
    server.then(Reply(400, {"error": {"message": "context too long"}}))
    with pytest.raises(UpstreamError, match="context too long") as info:
        predict(make(server), ITEMS[:1])
    assert info.value.status == 400 and not info.value.retryable
    assert server.calls == 1


def test_timeouts_are_retried_then_raised_as_upstream_timeout(server: FakeUpstream) -> None:
    server.then(Reply(delay_s=0.6))
    a = predict(make(server, timeout_s=0.2), ITEMS[:1])  # first attempt times out, second answers
    assert a.labels == ["fresh"] and server.calls == 2

    server.then(Reply(delay_s=0.6), Reply(delay_s=0.6))
    with pytest.raises(UpstreamTimeoutError) as info:
        predict(make(server, timeout_s=0.2, max_retries=1), ITEMS[:1])
    assert isinstance(info.value.__cause__, TimeoutError) and info.value.retryable


def test_persistently_malformed_responses_raise(server: FakeUpstream) -> None:
    server.then(*[Reply(200, "<html>bad gateway</html>")] * 2)
    with pytest.raises(UpstreamError, match="malformed response"):
        predict(make(server, max_retries=1), ITEMS[:1])


def test_connection_refused_is_an_upstream_error() -> None:
    with FakeUpstream() as srv:
        url = srv.base_url  # closed when the block ends: nothing listens there any more
    m = OpenAIChat(**{**SENTIMENT, "base_url": url, "max_retries": 1})
    with pytest.raises(UpstreamError, match="connection error") as info:
        predict(m, ITEMS[:1])
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)


# ------------------------------------------------------------------ budget


def test_budget_refuses_a_call_that_could_exceed_the_cap_before_sending(
    server: FakeUpstream,
) -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
    m = make(server, prices=prices, max_usd=1e-5)  # worst case of one call is > 1e-4
    with pytest.raises(BudgetExceededError, match="max_usd"):
        predict(m, ITEMS[:1])
    assert server.calls == 0 and m.budget.spent_usd == 0.0


def test_budget_stops_spending_at_the_cap_and_settles_real_usage(server: FakeUpstream) -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 2e-6, "usd_per_request": 1e-6}
    per_call = 10 * 1e-6 + 2 * 2e-6 + 1e-6  # the fake reports 10 tokens in, 2 out
    probe = make(server, prices=prices)
    worst = probe.worst_case_cost([Item("i", "a good film 0")])
    probe.close()
    assert worst > 3 * per_call  # input bytes as tokens, max_tokens out
    # room for three real calls plus one worst case, never for a fourth worst case on top
    cap = 3 * per_call + worst + 1e-12
    m = make(server, prices=prices, max_usd=cap, max_concurrency=1)
    items = [Item(str(i), f"a good film {i}") for i in range(10)]
    with pytest.raises(BudgetExceededError):
        predict(m, items)
    assert server.calls == 4
    assert m.budget.spent_usd == pytest.approx(server.calls * per_call)
    assert m.budget.spent_usd <= cap and m.budget.reserved_usd == pytest.approx(0.0)


def test_answers_carry_priced_usage(server: FakeUpstream) -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 2e-6, "usd_per_request": 1e-6}
    a = predict(make(server, prices=prices), ITEMS[:2])
    np.testing.assert_allclose(a.cost, 10e-6 + 4e-6 + 1e-6)
    np.testing.assert_array_equal(a.tokens_in, [10, 10])
    np.testing.assert_array_equal(a.tokens_out, [2, 2])
    assert (a.latency_ms > 0).all()


def test_budget_reserves_then_settles_once() -> None:
    b = Budget(1.0)
    r = b.reserve(0.6)
    with pytest.raises(BudgetExceededError):
        b.reserve(0.5)
    assert b.settle(r, 0.1) == pytest.approx(0.1)
    assert b.settle(r, 0.1) == 0.0  # a second settle of the same reservation charges nothing
    b.reserve(0.5)
    assert b.spent_usd == pytest.approx(0.1) and b.reserved_usd == pytest.approx(0.5)


# ------------------------------------------------------------------ cache


def test_second_identical_run_makes_zero_upstream_calls(
    server: FakeUpstream, tmp_path: Path
) -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
    spec = {
        **SENTIMENT,
        "kind": "openai",
        "base_url": server.base_url,
        "prices": prices,
        "cache": "c.db",
    }
    first = build_model(spec, BuildContext(base_dir=tmp_path))
    a = predict(first, ITEMS)  # type: ignore[arg-type]
    assert server.calls == 3
    second = build_model(spec, BuildContext(base_dir=tmp_path))  # a new run, same store
    b = predict(second, ITEMS)  # type: ignore[arg-type]
    assert server.calls == 3  # nothing was sent again
    assert b.labels == a.labels
    np.testing.assert_allclose(b.probs, a.probs)
    np.testing.assert_array_equal(b.cost, 0.0)
    assert b.extra["cached"] == [True, True, True]
    np.testing.assert_allclose(b.extra["recorded_usd"], a.cost)
    cache = ResponseCache(tmp_path / "c.db")
    totals = cache.totals()
    cache.close()
    assert totals["calls"] == 3 and totals["usd"] == pytest.approx(a.cost.sum())


def test_cache_key_depends_on_parameters_not_on_the_key(
    server: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ResponseCache(tmp_path / "c.db")
    monkeypatch.setenv("K", "key-one")
    predict(_keyed(server, cache), ITEMS[:1])
    monkeypatch.setenv("K", "key-two")
    predict(_keyed(server, cache), ITEMS[:1])
    assert server.calls == 1  # another key, same request: served from the cache
    predict(_keyed(server, cache, temperature=0.5), ITEMS[:1])
    assert server.calls == 2  # another parameter: a new request
    cache.close()


def _keyed(server: FakeUpstream, cache: ResponseCache, **kw: Any) -> OpenAIChat:
    return OpenAIChat(
        cache=cache, **{**SENTIMENT, "base_url": server.base_url, "api_key_env": "K", **kw}
    )


def test_duplicate_requests_in_one_batch_are_paid_once(server: FakeUpstream) -> None:
    same = [Item(str(i), "a good film") for i in range(4)]
    a = predict(make(server, prices={"usd_per_request": 1.0}), same)
    assert server.calls == 1
    assert a.labels == ["fresh"] * 4 and a.cost.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ secrets

SENTINEL = "sk-SENTINEL-5f1c2a9e"


def test_the_api_key_never_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TIERED_TEST_KEY", SENTINEL)
    caplog.set_level(logging.DEBUG)

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        return chat_body("positive", [("positive", -0.1, {"positive": -0.1})])

    leaks: list[str] = []
    with FakeUpstream(responder) as srv:
        spec = {
            **SENTIMENT,
            "kind": "openai",
            "base_url": srv.base_url,
            "api_key_env": "TIERED_TEST_KEY",
            "cache": str(tmp_path / "store.db"),
            "max_retries": 1,
        }
        m = build_model(spec, BuildContext(base_dir=tmp_path))
        a = m.predict(ITEMS[:2])
        leaks += [repr(m), repr(getattr(m, "spec", "")), repr(a), str(a.extra), str(a.signals)]
        # a server that echoes the key in its error (as some gateways do)
        srv.then(*[Reply(401, {"error": {"message": f"bad key Bearer {SENTINEL}"}})] * 2)
        with pytest.raises(UpstreamError) as info:
            m.predict([Item("z", "another good film")])
        leaks += [str(info.value), repr(info.value)]
        m.close()  # type: ignore[attr-defined]
        sent = srv.seen[0].headers.get("authorization", "")
    assert sent == f"Bearer {SENTINEL}"  # the key was used: the checks below can fail
    leaks.append(caplog.text)
    assert "DEBUG" in caplog.text  # debug logging was on
    db = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("store.db"))
    assert b"positive" in db  # responses were stored
    assert SENTINEL.encode() not in db
    for text in leaks:
        assert SENTINEL not in text


# ------------------------------------------------------------------ config and API


def test_config_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"field 'model.labels'"):
        build_model({"kind": "openai", "model": "m", "api_key_env": None, "labels": ["x"]})
    with pytest.raises(ConfigError, match=r"field 'model.temprature'"):
        build_model(
            {
                "kind": "openai",
                "model": "m",
                "api_key_env": None,
                "temprature": 1,
                "labels": ["a", "b"],
            }
        )
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        build_model(
            {"kind": "openai", "model": "m", "api_key_env": "NO_SUCH_KEY_VAR", "labels": ["a", "b"]}
        )
    with pytest.raises(ConfigError, match="unknown normalizer"):
        resolve_normalizer("nope")


def test_template_field_missing_from_an_item_is_a_data_error(server: FakeUpstream) -> None:
    m = make(server, prompt="{input} / {topic}")
    with pytest.raises(DataError, match=r"'topic'.*item 'a'"):
        predict(m, ITEMS[:1])
    a = predict(
        make(server, prompt="{topic}: {input}"), [Item("t", "good", fields={"topic": "film"})]
    )
    assert server.seen[-1].body["messages"][0]["content"] == "film: good" and a.labels == ["fresh"]


def test_predict_works_inside_a_running_event_loop(server: FakeUpstream) -> None:
    m = make(server)

    async def main() -> tuple[list[str | None], list[str | None]]:
        inside = m.predict(ITEMS[:2])  # sync call while this loop runs
        direct = await m.apredict(ITEMS[:2])
        await m.aclose()
        return inside.labels, direct.labels

    try:
        assert asyncio.run(main()) == (["fresh", "rotten"], ["fresh", "rotten"])
    finally:
        m.close()
    assert predict(make(server), []).labels == []


def test_normalisers() -> None:
    assert normalize_number("so 3 + 4 = 7.0") == "7"
    assert normalize_number("costs $1,234.50") == "1234.5"
    assert normalize_number("-12 degrees") == "-12"
    assert normalize_number("no digits") is None
    assert normalize_choice("The answer is (c).") == "C"
    assert normalize_choice("B) because") == "B"
    assert normalize_choice("none of these") is None
    assert normalize_casefold("  'Paris.'  ") == "paris"


def test_builder_takes_the_run_store_and_a_shared_budget(
    server: FakeUpstream, tmp_path: Path
) -> None:
    prices = {"usd_per_request": 1.0}
    ctx = BuildContext(
        base_dir=tmp_path, resources={"store_path": tmp_path / "run.db", "budget": Budget(1.5)}
    )
    spec = {**SENTIMENT, "kind": "openai", "base_url": server.base_url, "prices": prices}
    first, second = build_model(spec, ctx), build_model({**spec, "model": "other"}, ctx)
    predict(first, ITEMS[:1])  # type: ignore[arg-type]
    with pytest.raises(BudgetExceededError):  # the budget is the run's, not the stage's
        predict(second, ITEMS[:1])  # type: ignore[arg-type]
    assert server.calls == 1
    cache = ResponseCache(tmp_path / "run.db")
    assert len(cache) == 1  # cached in the run's store
    cache.close()


def test_max_completion_tokens_for_reasoning_models(server: FakeUpstream) -> None:
    predict(make(server, max_tokens=5, max_tokens_field="max_completion_tokens"), ITEMS[:1])
    body = server.seen[0].body
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body


def test_cache_false_means_no_cache_and_true_without_a_path_is_an_error(
    server: FakeUpstream,
) -> None:
    # regression: cache=False used to be kept as the cache object and crash at call time
    model = make(server, cache=False)
    assert model.cache is None
    before = server.calls
    predict(model, [Item("1", "great")])
    predict(make(server, cache=False), [Item("1", "great")])
    assert server.calls == before + 2
    with pytest.raises(ConfigError, match="cache=True needs a place"):
        make(server, cache=True)
