"""The gateway's serving classes against fake models: schema, errors, budgets, limits.

Fake models come in through the model registry (kind ``fake``, looked up by ``ref`` in
the build context's resources), so every gateway here is built from a config exactly
as ``tiered serve`` builds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openai.types as oai
import openai.types.chat as oai_chat
import pytest
from fastapi.testclient import TestClient
from openai._models import construct_type

from tiered.core import AnswerBatch, Item, ModelTags, register_model
from tiered.errors import (
    BudgetExceededError,
    ConfigError,
    StoreError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tiered.errors import RateLimitError as UpstreamRateLimit
from tiered.serve import Gateway, build_app, error_response, load_gateway_config
from tiered.serve.auth import KeyRing, Principal, parse_key_entries
from tiered.serve.config import BudgetSettings, GatewayConfig
from tiered.serve.errors import (
    AuthenticationError,
    BudgetDeniedError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    NoAnswerError,
    OverloadedError,
    PayloadTooLargeError,
)
from tiered.serve.gateway import gateway_budget
from tiered.serve.protocol import ChatCompletionRequest, ClassifyRequest, CompletionRequest
from tiered.serve.serving_base import DONE, KEEPALIVE, split_text
from tiered.serve.serving_chat import OpenAIServingChat
from tiered.serve.serving_classify import OpenAIServingClassify
from tiered.serve.serving_completion import OpenAIServingCompletion
from tiered.serve.serving_models import OpenAIServingModels
from tiered.store import connect

from ._hostile import marker_pickle

ME = Principal("anonymous")


class Scripted:
    """An async fake stage: answers from a function, with cost, signal, delay or failure."""

    tags = ModelTags(generates_text=True, asynchronous=True)

    def __init__(
        self,
        name: str,
        answer: Callable[[Item], str | None] = lambda it: f"answer to {it.text}",
        *,
        conf: float = 0.9,
        cost: float = 0.001,
        delay: float = 0.0,
        error: Exception | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.answer = answer
        self.conf = conf
        self.cost = cost
        self.delay = delay
        self.error = error
        self.gate = gate
        self.seen: list[Item] = []

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        raise AssertionError("the gateway must await apredict")

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        self.seen.extend(items)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        n = len(items)
        return AnswerBatch.from_labels(
            [self.answer(it) for it in items],
            cost=self.cost,
            latency_ms=2.5,
            signals={"score": np.full(n, self.conf)},
            tokens_in=np.full(n, 7.0),
            tokens_out=np.full(n, 3.0),
        )


class Blocking:
    """A sync in-process model that blocks its thread (llama.cpp-like)."""

    tags = ModelTags()

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        time.sleep(self.seconds)
        return AnswerBatch.from_labels(["slow answer"] * len(items))


register_model("fake")(lambda spec, ctx: ctx.resources["fakes"][spec["ref"]])


def stage(ref: str, **extra: Any) -> dict[str, Any]:
    return {"name": ref, "model": {"kind": "fake", "ref": ref}, **extra}


THRESHOLD = {"kind": "threshold", "signal": "score", "threshold": 0.5}


def make_gateway(
    fakes: dict[str, Any],
    cascades: list[dict[str, Any]],
    *,
    keys: dict[str, str] | None = None,
    **sections: Any,
) -> Gateway:
    cfg = GatewayConfig.model_validate({"cascades": cascades, **sections})
    gw = Gateway.from_config(cfg, resources={"fakes": fakes})
    if keys is not None:
        gw.keys = KeyRing(keys)
    return gw


def two_stage(small: Scripted, big: Scripted, **cascade: Any) -> Gateway:
    return make_gateway(
        {"small": small, "big": big},
        [{"name": "casc", "stages": [stage("small", rule=THRESHOLD), stage("big")], **cascade}],
    )


def chat(model: str = "casc", text: str = "hello", **kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=model, messages=[{"role": "user", "content": text}], **kw)


async def collect(stream: Any) -> list[bytes]:
    return [chunk async for chunk in stream]


def events(chunks: list[bytes]) -> list[Any]:
    """The SSE data payloads (``[DONE]`` as a string), comments dropped."""
    out: list[Any] = []
    for raw in b"".join(chunks).split(b"\n\n"):
        if raw.startswith(b"data: "):
            data = raw[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --------------------------------------------------------------------------- schema


def test_chat_completion_parses_as_openai_and_carries_the_trace() -> None:
    gw = two_stage(Scripted("small", conf=0.2), Scripted("big"))
    served = asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r1"))
    body = served.body.model_dump(mode="json")
    parsed = oai_chat.ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "answer to hello"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.total_tokens == 10
    trace = body["tiered"]
    assert trace["stage"] == "big" and trace["stage_index"] == 1
    assert [t["stage"] for t in trace["trace"]] == ["small", "big"]
    assert [t["accepted"] for t in trace["trace"]] == [False, True]
    assert trace["cost_usd"] == pytest.approx(0.002)
    assert served.headers["x-tiered-stage"] == "big"
    assert float(served.headers["x-tiered-cost-usd"]) == pytest.approx(0.002)
    assert served.headers["x-tiered-deferrals"] == "1"


def test_cheap_stage_answers_when_confident_and_later_stages_never_run() -> None:
    big = Scripted("big")
    gw = two_stage(Scripted("small", conf=0.9), big)
    served = asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r"))
    assert served.body.tiered.stage == "small"
    assert served.body.tiered.confidence == pytest.approx(0.9)
    assert big.seen == []


def test_messages_and_generation_parameters_reach_the_stage() -> None:
    small = Scripted("small", conf=0.9)
    gw = two_stage(small, Scripted("big"))
    req = ChatCompletionRequest(
        model="casc",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        max_completion_tokens=5,
        temperature=0.0,
        stop=["\n"],
    )
    asyncio.run(OpenAIServingChat(gw).create_chat_completion(req, ME, request_id="r"))
    item = small.seen[0]
    assert item.input == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert item.params == {"max_tokens": 5, "temperature": 0.0, "stop": ["\n"]}


def test_stream_chunks_parse_as_openai_and_end_with_done() -> None:
    gw = two_stage(Scripted("small", lambda it: "word " * 40, conf=0.9), Scripted("big"))
    req = chat(stream=True, stream_options={"include_usage": True})

    async def go() -> tuple[dict[str, str], list[bytes]]:
        served = await OpenAIServingChat(gw).create_chat_completion(req, ME, request_id="s")
        return served.headers, await collect(served.stream)

    headers, chunks = asyncio.run(go())
    evs = events(chunks)
    assert evs[-1] == "[DONE]"
    parsed = [oai_chat.ChatCompletionChunk.model_validate(e) for e in evs[:-1]]
    assert parsed[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text == ("word " * 40).strip()  # an assistant message is stripped
    assert len([c for c in parsed if c.choices and c.choices[0].delta.content]) > 1
    finish = [c for c in parsed if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finish) == 1 and finish[0].model_extra["tiered"]["stage"] == "small"
    assert parsed[-1].choices == [] and parsed[-1].usage is not None
    assert headers["x-tiered-stage"] == "small"


def test_completions_batch_prompts_in_one_cascade_batch() -> None:
    small = Scripted("small", conf=0.9)
    gw = two_stage(small, Scripted("big"))
    req = CompletionRequest(model="casc", prompt=["a", "b", "c"])
    served = asyncio.run(OpenAIServingCompletion(gw).create_completion(req, ME, request_id="c"))
    parsed = oai.Completion.model_validate(served.body.model_dump(mode="json"))
    assert [c.text for c in parsed.choices] == ["answer to a", "answer to b", "answer to c"]
    assert [c.index for c in parsed.choices] == [0, 1, 2]
    assert len(served.body.tiered) == 3
    assert len(small.seen) == 3


def test_completion_stream_parses_and_each_prompt_finishes_with_its_trace() -> None:
    gw = two_stage(Scripted("small", conf=0.9), Scripted("big"))
    req = CompletionRequest(model="casc", prompt=["a", "b"], stream=True)

    async def go() -> list[bytes]:
        served = await OpenAIServingCompletion(gw).create_completion(req, ME, request_id="c")
        return await collect(served.stream)

    evs = events(asyncio.run(go()))
    assert evs[-1] == "[DONE]"
    # the client builds stream chunks without validation (finish_reason is null mid-stream)
    parsed = [construct_type(type_=oai.Completion, value=e) for e in evs[:-1]]
    assert all(isinstance(p, oai.Completion) for p in parsed)
    assert all(len(p.choices) == 1 for p in parsed)  # no choice-less chunk unless asked
    finishes = [p for p in parsed if p.choices[0].finish_reason == "stop"]
    assert [f.choices[0].index for f in finishes] == [0, 1]
    assert all(f.model_extra["tiered"][0]["stage"] == "small" for f in finishes)


def test_models_list_parses_as_openai() -> None:
    gw = two_stage(Scripted("small"), Scripted("big"))
    body = OpenAIServingModels(gw).list_models().model_dump(mode="json")
    models = [oai.Model.model_validate(m) for m in body["data"]]
    assert [m.id for m in models] == ["casc"]
    assert body["data"][0]["stages"] == ["small", "big"]


def test_classify_reports_label_stage_confidence_and_cost_per_text() -> None:
    small = Scripted("small", lambda it: "pos" if "good" in it.text else "neg", cost=0.0)
    small_conf = Scripted("big", lambda it: "neg", cost=0.01)
    gw = make_gateway(
        {"small": small, "big": small_conf},
        [
            {
                "name": "sent",
                "task": "classify",
                "stages": [
                    stage("small", rule={"kind": "threshold", "signal": "score", "threshold": 0.5}),
                    stage("big"),
                ],
            }
        ],
    )
    small.conf = 0.9
    req = ClassifyRequest(model="sent", input=["good film", "bad film"])
    served = asyncio.run(OpenAIServingClassify(gw).create_classification(req, ME, request_id="k"))
    data = served.body.data
    assert [d.label for d in data] == ["pos", "neg"]
    assert [d.stage for d in data] == ["small", "small"]
    assert [d.confidence for d in data] == [pytest.approx(0.9)] * 2
    assert [d.cost_usd for d in data] == [0.0, 0.0]
    assert served.headers["x-tiered-stage"] == "small,small"


def test_classify_refuses_a_chat_cascade_naming_model() -> None:
    gw = two_stage(Scripted("small"), Scripted("big"))
    req = ClassifyRequest(model="casc", input="x")
    with pytest.raises(InvalidRequestError) as err:
        asyncio.run(OpenAIServingClassify(gw).create_classification(req, ME, request_id="k"))
    assert err.value.param == "model"


# --------------------------------------------------------------------------- errors


def test_unknown_model_is_404_naming_model() -> None:
    gw = two_stage(Scripted("small"), Scripted("big"))
    with pytest.raises(ModelNotFoundError) as err:
        asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat("gpt-5"), ME, request_id="r"))
    status, body, _ = error_response(err.value)
    assert status == 404
    assert body.error.param == "model" and body.error.code == "model_not_found"
    assert "gpt-5" in body.error.message and "casc" in body.error.message


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_parameters_the_gateway_cannot_honour_are_400s_naming_them(
    kwargs: dict[str, Any], param: str
) -> None:
    gw = two_stage(Scripted("small"), Scripted("big"))
    with pytest.raises(InvalidRequestError) as err:
        asyncio.run(
            OpenAIServingChat(gw).create_chat_completion(chat(**kwargs), ME, request_id="r")
        )
    assert error_response(err.value)[0] == 400
    assert err.value.param == param


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (UpstreamTimeoutError("slow"), 504, "upstream_timeout"),
        (UpstreamError("boom", status=500), 502, "upstream_error"),
        (UpstreamRateLimit("later", status=429), 429, "upstream_rate_limited"),
        (BudgetExceededError("cap"), 402, "upstream_budget_exhausted"),
        (DeadlineExceededError("late"), 504, "deadline_exceeded"),
        (OverloadedError("full", headers={"retry-after": "1"}), 429, "overloaded"),
        (BudgetDeniedError("poor"), 402, "budget_exceeded"),
        (PayloadTooLargeError("big"), 413, "payload_too_large"),
        (AuthenticationError("who"), 401, "invalid_api_key"),
        (NoAnswerError("none"), 502, "no_answer"),
    ],
)
def test_error_mapping(exc: Exception, status: int, code: str) -> None:
    got, body, headers = error_response(exc)
    assert got == status
    assert body.error.code == code
    assert set(body.model_dump()["error"]) == {"message", "type", "param", "code"}
    if status == 429:
        assert headers["retry-after"].isdigit()


def test_a_bug_is_a_500_that_does_not_leak_its_message() -> None:
    status, body, _ = error_response(ValueError("secret prompt text"))
    assert status == 500 and body.error.type == "server_error"
    assert "secret" not in body.error.message


def test_validation_errors_are_400_with_the_param_and_without_the_value() -> None:
    with pytest.raises(Exception) as err:
        ChatCompletionRequest.model_validate_json(
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"temperature": "private words"}'
        )
    status, body, _ = error_response(err.value)
    assert status == 400 and body.error.param == "temperature"
    assert "private words" not in body.error.message


def test_upstream_failure_defers_to_the_next_stage_when_configured() -> None:
    small = Scripted("small", error=UpstreamError("HTTP 500 from upstream", status=500))
    gw = two_stage(small, Scripted("big"), on_error="defer")
    served = asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r"))
    tr = served.body.tiered
    assert tr.stage == "big"
    assert tr.trace[0].error is not None and "UpstreamError" in tr.trace[0].error
    metrics = gw.metrics.render().decode()
    assert 'tiered_upstream_errors_total{cascade="casc",error="UpstreamError",stage="small"}' in (
        metrics
    )


def test_upstream_failure_without_defer_is_an_openai_error() -> None:
    small = Scripted("small", error=UpstreamTimeoutError("upstream timed out"))
    gw = two_stage(small, Scripted("big"))
    with pytest.raises(UpstreamTimeoutError) as err:
        asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r"))
    assert error_response(err.value)[0] == 504


def test_no_usable_answer_from_the_last_stage_is_a_502() -> None:
    gw = two_stage(Scripted("small", conf=0.1), Scripted("big", lambda it: None))
    with pytest.raises(NoAnswerError):
        asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r"))


# --------------------------------------------------------------------------- deadline


def test_deadline_returns_504_and_releases_slot_and_reservation() -> None:
    gw = two_stage(
        Scripted("small", conf=0.1),
        Scripted("big", delay=30.0),
        deadline_s=0.05,
        reserve_usd=0.5,
    )
    gw.budget.max_usd = 10.0

    async def go() -> float:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceededError):
            await OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r")
        return time.perf_counter() - t0

    assert asyncio.run(go()) < 5.0
    assert gw.limiter.count == 0
    assert gw.budget.reserved("anonymous") == 0.0
    # the stage that completed is paid for; the one cut short is not
    assert gw.budget.spent("anonymous") == pytest.approx(0.001)


def test_deadline_holds_for_a_blocking_in_process_model() -> None:
    gw = make_gateway(
        {"slow": Blocking("slow", 1.0)},
        [{"name": "local", "deadline_s": 0.05, "stages": [stage("slow")]}],
    )

    async def go() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        with pytest.raises(DeadlineExceededError):
            await OpenAIServingChat(gw).create_chat_completion(chat("local"), ME, request_id="r")
        t.cancel()
        # the event loop kept running while the model blocked its own thread
        assert ticks >= 2

    asyncio.run(go())
    gw.close()


# --------------------------------------------------------------------------- back-pressure


def test_in_flight_limit_refuses_with_429_and_retry_after() -> None:
    gate = asyncio.Event()

    async def go() -> None:
        gw = make_gateway(
            {"small": Scripted("small", gate=gate)},
            [{"name": "casc", "stages": [stage("small")]}],
            server={"max_in_flight": 2, "retry_after_s": 3},
        )
        serving = OpenAIServingChat(gw)
        running = [
            asyncio.create_task(serving.create_chat_completion(chat(), ME, request_id=f"r{i}"))
            for i in range(2)
        ]
        await asyncio.sleep(0.01)
        assert gw.limiter.count == 2
        with pytest.raises(OverloadedError) as err:
            await serving.create_chat_completion(chat(), ME, request_id="r3")
        status, _, headers = error_response(err.value)
        assert status == 429 and headers["retry-after"] == "3"
        gate.set()
        await asyncio.gather(*running)
        assert gw.limiter.count == 0
        ok = await serving.create_chat_completion(chat(), ME, request_id="r4")
        assert ok.body is not None

    asyncio.run(go())


# --------------------------------------------------------------------------- budgets


def test_concurrent_requests_never_spend_past_a_key_budget() -> None:
    async def go() -> tuple[int, int, Gateway]:
        gw = make_gateway(
            {"small": Scripted("small", cost=0.001, delay=0.02)},
            [{"name": "casc", "reserve_usd": 0.001, "stages": [stage("small")]}],
            budgets={"per_key": {"alice": 0.0025}, "default_usd": 1.0},
            keys={"sk-alice": "alice"},
        )
        alice = gw.authenticate("Bearer sk-alice")
        serving = OpenAIServingChat(gw)
        results = await asyncio.gather(
            *(serving.create_chat_completion(chat(), alice, request_id=f"r{i}") for i in range(8)),
            return_exceptions=True,
        )
        ok = sum(not isinstance(r, BaseException) for r in results)
        denied = sum(isinstance(r, BudgetDeniedError) for r in results)
        return ok, denied, gw

    ok, denied, gw = asyncio.run(go())
    assert (ok, denied) == (2, 6)
    assert gw.budget.spent("alice") == pytest.approx(0.002)
    assert gw.budget.reserved("alice") == 0.0
    assert error_response(BudgetDeniedError("x"))[0] == 402


def test_worst_case_reservation_comes_from_token_prices() -> None:
    gw = make_gateway(
        {"small": Scripted("small", cost=0.0)},
        [
            {
                "name": "casc",
                "stages": [
                    stage(
                        "small",
                        cost={"kind": "tokens", "usd_per_input_token": 0.0,
                              "usd_per_output_token": 0.001},
                    )
                ],
            }
        ],
        budgets={"default_usd": 0.05},
    )  # fmt: skip
    serving = OpenAIServingChat(gw)
    # 100 output tokens at $0.001 fit in $0.05? no: refused before anything runs
    with pytest.raises(BudgetDeniedError):
        asyncio.run(serving.create_chat_completion(chat(max_tokens=100), ME, request_id="a"))
    ok = asyncio.run(serving.create_chat_completion(chat(max_tokens=10), ME, request_id="b"))
    assert ok.body is not None


def test_spend_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    settings = BudgetSettings(default_usd=1.0)

    def spend() -> None:
        budget = gateway_budget(settings, connect(db))
        r = budget.reserve(0.4, account="bob")
        budget.settle(r, 0.3)

    spend()
    spend()
    again = gateway_budget(settings, connect(db))
    assert again.spent("bob") == pytest.approx(0.6)
    assert again.remaining("bob") == pytest.approx(0.4)
    with pytest.raises(BudgetExceededError):
        again.reserve(0.5, account="bob")


# --------------------------------------------------------------------------- size limits


def test_message_batch_and_count_limits_are_413s_naming_the_param() -> None:
    gw = make_gateway(
        {"small": Scripted("small")},
        [
            {"name": "casc", "stages": [stage("small")]},
            {"name": "sent", "task": "classify", "stages": [stage("small")]},
        ],
        server={"max_message_chars": 10, "max_batch": 2, "max_messages": 1},
    )
    cases = [
        (OpenAIServingChat(gw).create_chat_completion(chat(text="x" * 11), ME, request_id="a"),
         "messages.0.content"),
        (OpenAIServingClassify(gw).create_classification(
            ClassifyRequest(model="sent", input=["a", "b", "c"]), ME, request_id="b"), "input"),
        (OpenAIServingCompletion(gw).create_completion(
            CompletionRequest(model="casc", prompt="y" * 11), ME, request_id="c"), "prompt"),
        (OpenAIServingChat(gw).create_chat_completion(
            ChatCompletionRequest(model="casc", messages=[{"role": "user", "content": "a"}] * 2),
            ME, request_id="d"), "messages"),
    ]  # fmt: skip
    for coro, param in cases:
        with pytest.raises(PayloadTooLargeError) as err:
            asyncio.run(coro)
        assert err.value.param == param
        assert error_response(err.value)[0] == 413


# --------------------------------------------------------------------------- streaming


def test_a_stream_that_fails_after_it_started_sends_an_error_then_done() -> None:
    small = Scripted("small", delay=0.15, error=UpstreamError("upstream 500", status=500))
    gw = make_gateway(
        {"small": small},
        [{"name": "casc", "stages": [stage("small")]}],
        server={"stream_keepalive_s": 0.05},
    )

    async def go() -> list[bytes]:
        served = await OpenAIServingChat(gw).create_chat_completion(
            chat(stream=True), ME, request_id="s"
        )
        assert "x-tiered-stage" not in served.headers  # not known when the stream began
        return await collect(served.stream)

    chunks = asyncio.run(go())
    assert chunks[0] == KEEPALIVE and chunks[-1] == DONE
    evs = events(chunks)
    assert evs[-1] == "[DONE]"
    assert evs[0]["error"]["code"] == "upstream_error"
    assert gw.limiter.count == 0


def test_a_slow_stream_sends_keepalives_then_the_answer() -> None:
    gw = make_gateway(
        {"small": Scripted("small", delay=0.15)},
        [{"name": "casc", "stages": [stage("small")]}],
        server={"stream_keepalive_s": 0.05},
    )

    async def go() -> list[bytes]:
        served = await OpenAIServingChat(gw).create_chat_completion(
            chat(stream=True), ME, request_id="s"
        )
        return await collect(served.stream)

    chunks = asyncio.run(go())
    assert chunks.count(KEEPALIVE) >= 2
    evs = events(chunks)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in evs[:-1])
    assert text == "answer to hello" and evs[-1] == "[DONE]"


def test_a_fast_failing_stream_is_a_plain_http_error() -> None:
    small = Scripted("small", error=UpstreamError("boom", status=500))
    gw = make_gateway({"small": small}, [{"name": "casc", "stages": [stage("small")]}])
    with pytest.raises(UpstreamError):
        asyncio.run(
            OpenAIServingChat(gw).create_chat_completion(chat(stream=True), ME, request_id="s")
        )


def test_split_text_keeps_every_character() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 5
    pieces = split_text(text, 16)
    assert "".join(pieces) == text
    assert all(len(p) <= 16 for p in pieces)
    assert split_text("", 8) == []


# --------------------------------------------------------------------------- keys


def test_key_entries_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nalice: sk-a1\nsk-anon\n", encoding="utf-8")
    monkeypatch.setenv("GW_KEYS", "carol:sk-c3, sk-d4")
    cfg = GatewayConfig.model_validate(
        {
            "auth": {"keys_file": str(keys), "keys_env": "GW_KEYS"},
            "cascades": [{"name": "c", "stages": [stage("small")]}],
        }
    )
    ring = KeyRing.from_settings(cfg.auth)
    assert ring.authenticate("Bearer sk-a1") == Principal("alice")
    assert ring.authenticate("bearer sk-c3") == Principal("carol")
    assert ring.authenticate("Bearer sk-anon").name.startswith("key-")
    for bad in (None, "", "Bearer nope", "Basic sk-a1", "sk-a1"):
        with pytest.raises(AuthenticationError):
            ring.authenticate(bad)
    assert KeyRing().authenticate(None) == Principal("anonymous")


def test_a_malformed_key_entry_does_not_show_the_secret() -> None:
    with pytest.raises(ConfigError) as err:
        parse_key_entries("alice: sk-has space", source="keys.txt")
    assert "sk-has" not in str(err.value)


# --------------------------------------------------------------------------- config


def test_gateway_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "server:\n  max_in_flight: 0\ncascades:\n  - name: c\n    stages:\n"
        "      - {name: a, model: {kind: fake, ref: a}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"gw\.yaml:2.*field 'server\.max_in_flight'"):
        load_gateway_config(path)


def test_several_files_merge_and_conflicts_are_refused(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(
        "server: {max_in_flight: 7, store: state.sqlite}\n"
        "cascades:\n  - {name: one, stages: [{name: s, model: {kind: fake, ref: s}}]}\n",
        encoding="utf-8",
    )
    b = tmp_path / "sub" / "b.yaml"
    b.parent.mkdir()
    b.write_text(
        "name: two\ntask: classify\nstages:\n  - {name: s, model: {kind: fake, ref: s}}\n",
        encoding="utf-8",
    )
    cfg = load_gateway_config([a, b])
    assert [c.name for c in cfg.cascades] == ["one", "two"]
    assert cfg.cascade("two").task == "classify"
    assert cfg.cascade("two").base_dir == b.parent.resolve()
    assert cfg.server.max_in_flight == 7
    assert cfg.server.store == str(tmp_path.resolve() / "state.sqlite")
    with pytest.raises(ConfigError, match="already served"):
        load_gateway_config([a, b, b])
    c = tmp_path / "c.yaml"
    c.write_text(
        "server: {max_in_flight: 3}\n"
        "cascades:\n  - {name: three, stages: [{name: s, model: {kind: fake, ref: s}}]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"c\.yaml.*'server' is already set by .*a\.yaml"):
        load_gateway_config([a, c])


def test_cascade_on_error_fills_stages_that_set_none() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "cascades": [
                {
                    "name": "c",
                    "on_error": "defer",
                    "stages": [stage("a"), stage("b", on_error="raise"), stage("c")],
                }
            ]
        }
    )
    assert [s.on_error for s in cfg.cascades[0].stage_specs()] == ["defer", "raise", "defer"]


# --------------------------------------------------------------------------- app


def test_app_auth_body_limit_and_error_shapes() -> None:
    gw = make_gateway(
        {"small": Scripted("small")},
        [{"name": "casc", "stages": [stage("small")]}],
        server={"max_body_bytes": 400},
        keys={"sk-test": "tester"},
    )
    ok_headers = {"authorization": "Bearer sk-test"}
    msg = {"model": "casc", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(build_app(gw)) as client:
        r = client.post("/v1/chat/completions", json=msg)
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        r = client.post("/v1/chat/completions", json=msg, headers={"authorization": "Bearer x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = client.post("/v1/chat/completions", json=msg, headers=ok_headers)
        assert r.status_code == 200 and r.headers["x-tiered-stage"] == "small"
        big = {**msg, "messages": [{"role": "user", "content": "x" * 500}]}
        r = client.post("/v1/chat/completions", json=big, headers=ok_headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = client.post("/v1/chat/completions", content=b"{nope", headers=ok_headers)
        assert r.status_code == 400 and set(r.json()["error"]) == {
            "message", "type", "param", "code"
        }  # fmt: skip
        r = client.get("/v1/models")
        assert r.status_code == 401
        r = client.get("/v1/models", headers=ok_headers)
        assert [m["id"] for m in r.json()["data"]] == ["casc"]
        assert client.get("/health").json()["status"] == "ok"
        r = client.get("/v1/nothing-here")
        assert r.status_code == 404 and "error" in r.json()
        metrics = client.get("/metrics").text
    assert 'tiered_requests_total{endpoint="/v1/chat/completions",status="401"} 2.0' in metrics
    assert 'tiered_requests_total{endpoint="/v1/chat/completions",status="413"} 1.0' in metrics
    assert 'tiered_stage_answers_total{cascade="casc",stage="small"} 1.0' in metrics
    assert "tiered_request_duration_seconds_bucket" in metrics
    assert "tiered_upstream_duration_seconds_bucket" in metrics


def test_logs_hold_neither_prompts_nor_keys_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    secret_prompt = "my-private-medical-question"
    secret_key = "sk-very-secret-key"
    msg = {"model": "casc", "messages": [{"role": "user", "content": secret_prompt}]}
    for debug in (False, True):
        gw = make_gateway(
            {"small": Scripted("small")},
            [{"name": "casc", "stages": [stage("small")]}],
            keys={secret_key: "tester"},
        )
        gw.debug_log_prompts = debug
        caplog.clear()
        with caplog.at_level(logging.DEBUG), TestClient(build_app(gw)) as client:
            client.post(
                "/v1/chat/completions", json=msg, headers={"authorization": f"Bearer {secret_key}"}
            )
            client.post(
                "/v1/chat/completions", json=msg, headers={"authorization": "Bearer sk-wrong"}
            )
        text = caplog.text
        assert "key=tester" in text
        assert secret_key not in text and "sk-wrong" not in text
        assert (secret_prompt in text) is debug


def test_metrics_count_stage_answers_deferrals_and_usd() -> None:
    gw = two_stage(Scripted("small", conf=0.1, cost=0.25), Scripted("big", cost=0.5))
    asyncio.run(OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="m"))
    text = gw.metrics.render().decode()
    assert 'tiered_stage_deferrals_total{cascade="casc",stage="small"} 1.0' in text
    assert 'tiered_stage_answers_total{cascade="casc",stage="big"} 1.0' in text
    assert 'tiered_stage_cost_usd_total{cascade="casc",stage="big"} 0.5' in text
    assert 'tiered_budget_spent_usd_total{key="anonymous"} 0.75' in text


# --------------------------------------------------------------------------- raw text


def test_chat_returns_the_raw_text_when_the_label_is_normalised() -> None:
    class Normalising(Scripted):
        async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
            answers = await super().apredict(items)
            answers.extra["text"] = ["  The Answer Is 42.\n"] * len(items)
            answers.labels = ["the answer is 42"] * len(items)
            return answers

    gw = make_gateway({"n": Normalising("n")}, [{"name": "casc", "stages": [stage("n")]}])
    chat_body = asyncio.run(
        OpenAIServingChat(gw).create_chat_completion(chat(), ME, request_id="r")
    ).body
    assert chat_body.choices[0].message.content == "The Answer Is 42."
    completion = asyncio.run(
        OpenAIServingCompletion(gw).create_completion(
            CompletionRequest(model="casc", prompt="q"), ME, request_id="c"
        )
    ).body
    assert completion.choices[0].text == "  The Answer Is 42.\n"  # completions: exact


# --------------------------------------------------------------------------- online learning


class Memorizer:
    """A learnable cheap stage: sure of texts it was taught, a weak guess ("neg") otherwise."""

    tags = ModelTags(gives_probabilities=True, learns_online=True)
    classes = ("neg", "pos")

    def __init__(self) -> None:
        self.name = "memo"
        self.known: dict[str, str] = {}

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        labels = [self.known.get(it.text, "neg") for it in items]
        probs = np.array(
            [
                [0.55, 0.45] if it.text not in self.known else [lab == "neg", lab == "pos"]
                for it, lab in zip(items, labels, strict=True)
            ],
            dtype=float,
        )
        return AnswerBatch.from_labels(labels, probs=probs, classes=self.classes)

    def learn(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        for it, lab in zip(items, labels, strict=True):
            self.known[it.text] = lab

    def state_dict(self) -> dict[str, Any]:
        return {"known": dict(self.known)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.known = dict(state["known"])


class CountingExpert(Scripted):
    """The expert: labels by keyword; records how many of its calls overlapped."""

    def __init__(self) -> None:
        super().__init__("expert", lambda it: "pos" if "good" in it.text else "neg", cost=0.01)
        self.running = 0
        self.max_running = 0

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(0.002)
            return await super().apredict(items)
        finally:
            self.running -= 1


ONLINE = {
    "warmup": 8,
    "refit_every": 4,
    "mu": 0.2,
    "head_min_examples": 4,
    "audit_rate": 0.0,
    "exploration_beta": 0.5,
}


def online_gateway(store: Path, expert: CountingExpert, memo: Memorizer, **online: Any) -> Gateway:
    return make_gateway(
        {"memo": memo, "expert": expert},
        [
            {
                "name": "sent",
                "task": "classify",
                "online": {**ONLINE, **online},
                "stages": [stage("memo"), stage("expert")],
            }
        ],
        server={"store": str(store)},
    )


TEXTS = [f"{'good' if i % 2 else 'bad'} film number {i % 6}" for i in range(60)]


def classify_concurrently(gw: Gateway, per_request: int) -> list[Any]:
    """TEXTS classified by cascade 'sent', ``per_request`` texts a request, all at once."""
    serving = OpenAIServingClassify(gw)

    async def go() -> list[Any]:
        reqs = [
            serving.create_classification(
                ClassifyRequest(model="sent", input=TEXTS[i : i + per_request]),
                ME,
                request_id=f"r{i}",
            )
            for i in range(0, len(TEXTS), per_request)
        ]
        return await asyncio.gather(*reqs)

    return asyncio.run(go())


def test_online_cascade_learns_from_the_expert_under_concurrent_requests(tmp_path: Path) -> None:
    expert, memo = CountingExpert(), Memorizer()
    gw = online_gateway(tmp_path / "gw.sqlite", expert, memo)
    responses = classify_concurrently(gw, per_request=3)
    data = [d for r in responses for d in r.body.data]
    assert len(data) == len(TEXTS)
    # every answer is the expert's label (the cheap stage is only sure of what it was taught)
    want = ["pos" if "good" in t else "neg" for t in TEXTS]
    assert [d.label for d in data] == want
    learner = gw.cascades["sent"].learner
    assert learner.n_items == len(TEXTS)  # no request's learning step was lost
    assert expert.max_running == 1  # learning steps never overlapped
    assert any(d.stage == "memo" for d in data)  # the cheap stage took over some texts
    assert all(d.learned == (d.stage == "expert") for d in data)
    assert sum(d.cost_usd for d in data) == pytest.approx(0.01 * learner.expert_calls)
    gw.close()


def test_an_audited_online_answer_is_the_experts_with_the_cheap_stage_in_its_trace(
    tmp_path: Path,
) -> None:
    # every answer the cheap stage accepts is audited: the expert's label is returned
    gw = online_gateway(tmp_path / "gw.sqlite", CountingExpert(), Memorizer(), audit_rate=1.0)
    responses = classify_concurrently(gw, per_request=6)
    outcomes = [o for r in responses for o in r.execution.outcomes]
    assert [o.label for o in outcomes] == ["pos" if "good" in t else "neg" for t in TEXTS]
    assert all(o.stage == "expert" and o.learned for o in outcomes)
    audited = [o for o in outcomes if len(o.trace) == 2]
    assert audited  # the cheap stage had learned some texts, and each answer was checked
    for o in audited:
        assert [(t.stage, t.accepted) for t in o.trace] == [("memo", False), ("expert", True)]
        assert o.trace[1].cost_usd == o.cost_usd and o.confidence == 1.0
    assert gw.cascades["sent"].learner.stats().audits == len(audited)
    gw.close()


def test_online_state_is_saved_to_the_store_and_resumed(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    gw = online_gateway(db, CountingExpert(), Memorizer())
    serving = OpenAIServingClassify(gw)
    asyncio.run(
        serving.create_classification(
            ClassifyRequest(model="sent", input=TEXTS[:20]), ME, request_id="a"
        )
    )
    gw.close()  # saves
    memo = Memorizer()
    again = online_gateway(db, CountingExpert(), memo)
    assert again.cascades["sent"].learner.n_items == 20
    assert memo.known  # the cheap stage's learned state came back
    again.close()
    with pytest.raises(Exception, match="different config"):
        online_gateway(db, CountingExpert(), Memorizer(), mu=0.3)


def test_online_state_that_is_a_pickle_never_runs(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    gw = online_gateway(db, CountingExpert(), Memorizer())
    gw.close()  # saves the (empty) learned state of cascade 'sent'
    marker = tmp_path / "pwned"
    conn = connect(db)
    conn.execute("UPDATE learner_state SET state = ?", (marker_pickle(marker),))
    conn.close()
    with pytest.raises(StoreError, match=r"learned state of 'sent'.*a pickle"):
        online_gateway(db, CountingExpert(), Memorizer())
    assert not marker.exists()


def test_a_request_cut_by_its_deadline_does_not_break_learning(tmp_path: Path) -> None:
    expert, memo = CountingExpert(), Memorizer()
    expert.delay = 0.3
    gw = online_gateway(tmp_path / "gw.sqlite", expert, memo)
    gw.cascades["sent"].deadline_s = 0.05
    serving = OpenAIServingClassify(gw)

    async def go() -> None:
        with pytest.raises(DeadlineExceededError):
            await serving.create_classification(
                ClassifyRequest(model="sent", input=TEXTS[:4]), ME, request_id="late"
            )
        await asyncio.sleep(0.5)  # the shielded learning step finishes meanwhile

    asyncio.run(go())
    assert gw.cascades["sent"].learner.n_items == 4
    gw.cascades["sent"].deadline_s = 5.0
    expert.delay = 0.0
    ok = asyncio.run(
        serving.create_classification(
            ClassifyRequest(model="sent", input=TEXTS[4:8]), ME, request_id="b"
        )
    )
    assert len(ok.body.data) == 4
    gw.close()


def test_a_model_error_found_at_build_time_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "cascades:\n  - name: a\n    stages: [{name: s, model: {kind: fake, ref: s}}]\n"
        "  - name: b\n    stages: [{name: s, model: {kind: no-such-kind}}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"gw\.yaml, field 'cascades\.1\.stages\.0\.model\.kind'"):
        Gateway.from_config(load_gateway_config(path), resources={"fakes": {"s": Scripted("s")}})
