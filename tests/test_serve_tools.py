"""Tool calls through the gateway: routing, acceptance, OpenAI's wire shape, streaming.

Unit tests drive the serving class with real ``openai`` stages (``OpenAIChat``) over an
in-memory transport; the end-to-end tests run ``tiered serve`` against the fake upstream
and call it with the official client.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import openai.types.chat as oai_chat
import pytest
from openai._models import construct_type

from tiered.core import Item, register_model
from tiered.errors import ConfigError
from tiered.models.llm import HttpRequest, HttpResponse, MockTransport, OpenAIChat
from tiered.models.llm.tools import ToolRequest, read_tool_calls
from tiered.serve import Gateway, error_response, load_gateway_config
from tiered.serve.auth import Principal
from tiered.serve.config import GatewayConfig
from tiered.serve.errors import InvalidRequestError
from tiered.serve.protocol import ChatCompletionRequest
from tiered.serve.serving_base import DONE
from tiered.serve.serving_chat import OpenAIServingChat
from tiered.testing import FakeUpstream, chat_body, tool_call

from .test_serve_e2e import launch

ME = Principal("anonymous")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
GOOD = tool_call("get_weather", {"city": "Paris"}, "call_good")
ASK = [{"role": "user", "content": "Weather in Paris?"}]

Handler = Callable[[dict[str, Any]], dict[str, Any]]

register_model("fake_llm")(lambda spec, ctx: ctx.resources["llms"][spec["ref"]])


def llm(name: str, handler: Handler, **kw: Any) -> OpenAIChat:
    """An ``openai`` stage answering with ``handler(request_json)`` (in memory)."""

    def reply(req: HttpRequest) -> HttpResponse:
        return HttpResponse.from_json(handler(req.json()))

    spec = {"mode": "generate", "normalizer": "exact", "api_key_env": None, "max_retries": 0}
    return OpenAIChat(name=name, model=name, transport=MockTransport(reply), **{**spec, **kw})


def calls(*made: dict[str, Any]) -> Handler:
    return lambda body: chat_body("", usage=(10, 5), tool_calls=list(made))


def text(answer: str) -> Handler:
    return lambda body: chat_body(answer, [(answer, -0.01, {})], usage=(10, 5))


def gateway(
    llms: dict[str, OpenAIChat], rules: dict[str, Any] | None = None, **cascade: Any
) -> Gateway:
    stages = [
        {
            "name": n,
            "model": {"kind": "fake_llm", "ref": n},
            **({"rule": rules[n]} if rules and n in rules else {}),
        }
        for n in llms
    ]
    cfg = GatewayConfig.model_validate(
        {"cascades": [{"name": "agent", "stages": stages, **cascade}]}
    )
    return Gateway.from_config(cfg, resources={"llms": llms})


def request(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "agent", "messages": ASK, "tools": [WEATHER, TIME], **kw}
    )


def complete(gw: Gateway, req: ChatCompletionRequest) -> dict[str, Any]:
    served = asyncio.run(OpenAIServingChat(gw).create_chat_completion(req, ME, request_id="r1"))
    assert served.body is not None
    return json.loads(served.body.model_dump_json())


def sent(model: OpenAIChat) -> list[dict[str, Any]]:
    assert isinstance(model.transport, MockTransport)
    return [r.json() for r in model.transport.requests]


LOGPROB_RULE = {"kind": "threshold", "signal": "logprob_mean", "threshold": -0.5}


# --------------------------------------------------------------------------- the signal


@pytest.mark.parametrize(
    ("made", "choice", "signal"),
    [
        ([GOOD], None, 1.0),
        ([GOOD, tool_call("get_time", "{}")], "auto", 1.0),
        ([tool_call("get_wether", {"city": "Paris"})], None, 0.0),  # unknown function
        ([tool_call("get_weather", '{"city": "Par')], None, 0.0),  # arguments not JSON
        ([tool_call("get_weather", "[1, 2]")], None, 0.0),  # not an object
        ([tool_call("get_weather", {"unit": "c"})], None, 0.0),  # required city missing
        ([tool_call("get_weather", {"city": "P", "mood": 1})], None, 0.0),  # forbidden extra
        ([GOOD], {"type": "function", "function": {"name": "get_time"}}, 0.0),  # not forced
        ([GOOD], "none", 0.0),
        (None, "required", 0.0),  # text where a call is required
        (None, "auto", math.nan),  # text where text is allowed: no signal
    ],
)
def test_the_tool_call_signal_says_whether_the_calls_are_well_formed(
    made: list[dict[str, Any]] | None, choice: Any, signal: float
) -> None:
    req = ToolRequest.of({"tools": [WEATHER, TIME], "tool_choice": choice})
    assert req is not None
    got = req.signal(read_tool_calls(made))
    assert got == signal or (math.isnan(signal) and math.isnan(got))


def test_tool_calls_are_read_in_openais_shape() -> None:
    raw = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    (call,) = read_tool_calls(raw) or []
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


# --------------------------------------------------------------------------- the stage


def test_a_tool_stage_forwards_tools_and_a_plain_stage_does_not() -> None:
    tool_stage = llm("big", calls(GOOD), tools=True)
    plain = llm("small", text("hi"))
    gw = gateway({"small": plain, "big": tool_stage})
    complete(gw, request(tool_choice="auto", parallel_tool_calls=False))
    (body,) = sent(tool_stage)
    assert body["tools"] == [WEATHER, TIME]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", False)
    assert sent(plain) == []  # a request with tools never reaches a stage without them
    complete(gw, ChatCompletionRequest(model="agent", messages=ASK))
    assert "tools" not in sent(plain)[-1]


def test_tools_need_a_generating_chat_stage() -> None:
    with pytest.raises(ConfigError, match="tools: true needs mode: generate"):
        OpenAIChat(model="m", mode="classify", labels=["a", "b"], tools=True, api_key_env=None)


# --------------------------------------------------------------------------- routing and acceptance


def test_a_well_formed_call_from_the_cheap_stage_is_the_answer_in_openais_shape() -> None:
    small, big = llm("small", calls(GOOD), tools=True), llm("big", calls(GOOD), tools=True)
    body = complete(gateway({"small": small, "big": big}), request())
    parsed = construct_type(type_=oai_chat.ChatCompletion, value=body)
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("call_good", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert body["tiered"]["stage"] == "small" and body["tiered"]["trace"][0]["accepted"]
    assert body["tiered"]["trace"][0]["signals"]["tool_call"] == 1.0
    assert sent(big) == []


def test_a_malformed_call_is_passed_on_to_the_next_tool_stage() -> None:
    bad = tool_call("get_weather", '{"city": ')
    small, big = llm("small", calls(bad), tools=True), llm("big", calls(GOOD), tools=True)
    body = complete(gateway({"small": small, "big": big}), request())
    assert body["choices"][0]["message"]["tool_calls"][0]["id"] == "call_good"
    first, second = body["tiered"]["trace"]
    assert (first["stage"], first["accepted"], first["signals"]["tool_call"]) == (
        "small",
        False,
        0.0,
    )
    assert (second["stage"], body["tiered"]["stage_index"]) == ("big", 1)


@pytest.mark.parametrize(
    ("accept", "said", "answered_by"),
    [
        ("tool_call_or_rule", "It is sunny.", "small"),  # a confident text answer
        ("tool_call_or_rule", GOOD, "small"),  # a call: no logprobs, still accepted
        ("tool_call", "It is sunny.", "big"),
        ("tool_call", GOOD, "small"),
        ("rule", "It is sunny.", "small"),
        ("rule", GOOD, "big"),  # the rule reads logprobs a call does not have
    ],
)
def test_what_an_earlier_tool_stage_has_accepted_depends_on_accept(
    accept: str, said: str | dict[str, Any], answered_by: str
) -> None:
    small = llm("small", text(said) if isinstance(said, str) else calls(said), tools=True)
    big = llm("big", calls(GOOD), tools=True)
    rules = {"small": LOGPROB_RULE}
    gw = gateway({"small": small, "big": big}, rules, tools={"accept": accept})
    body = complete(gw, request())
    assert body["tiered"]["stage"] == answered_by
    if answered_by == "small" and isinstance(said, str):
        assert body["choices"][0] == {
            "index": 0,
            "message": {"role": "assistant", "content": "It is sunny.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }


@pytest.mark.parametrize("accept", ["rule", "tool_call_or_rule"])
def test_a_malformed_call_is_passed_on_whatever_the_rule_says(accept: str) -> None:
    bad = tool_call("no_such_tool", "{}")
    small, big = llm("small", calls(bad), tools=True), llm("big", calls(GOOD), tools=True)
    gw = gateway({"small": small, "big": big}, tools={"accept": accept})  # rule: always
    assert complete(gw, request())["tiered"]["stage"] == "big"


def test_with_one_tool_stage_requests_with_tools_go_straight_to_it() -> None:
    small, big = llm("small", text("hi")), llm("big", calls(GOOD), tools=True)
    gw = gateway({"small": small, "big": big})
    body = complete(gw, request())
    assert [t["stage"] for t in body["tiered"]["trace"]] == ["big"]
    assert body["tiered"]["stage_index"] == 1  # its place in the served cascade
    plain = complete(gw, ChatCompletionRequest(model="agent", messages=ASK))
    assert plain["tiered"]["stage"] == "small"  # without tools: the whole cascade


def test_tools_stages_picks_which_stages_take_tool_requests() -> None:
    a, b = llm("a", calls(GOOD), tools=True), llm("b", calls(GOOD), tools=True)
    gw = gateway({"a": a, "b": b}, tools={"stages": ["b"]})
    assert complete(gw, request())["tiered"]["stage"] == "b"
    assert sent(a) == []


def test_a_conversation_with_tool_results_reaches_the_stage_as_sent() -> None:
    big = llm("big", text("18 degrees in Paris."), tools=True)
    turn = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [GOOD]},
        {"role": "tool", "tool_call_id": "call_good", "content": '{"temp": 18}'},
    ]
    body = complete(gateway({"big": big}), request(messages=turn))
    assert body["choices"][0]["message"]["content"] == "18 degrees in Paris."
    msgs = sent(big)[0]["messages"]
    assert msgs[1]["tool_calls"] == [GOOD]
    assert (msgs[2]["role"], msgs[2]["tool_call_id"]) == ("tool", "call_good")


def test_the_worst_case_reservation_counts_the_tools() -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
    big = llm("big", calls(GOOD), tools=True, prices=prices)
    served = gateway({"big": big}).cascades["agent"]
    bare = served.worst_case([Item(id="x", input=ASK)]).usd
    tools = served.worst_case([Item(id="x", input=ASK, params=request().params())]).usd
    assert tools >= bare + 1e-6 * len(json.dumps([WEATHER, TIME]))


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("tool_stage", "kwargs", "param"),
    [
        (False, {}, "tools"),  # no stage takes tools
        (True, {"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (True, {"tools": None, "tool_choice": "required"}, "tool_choice"),
        (True, {"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_tool_requests_the_gateway_cannot_serve_are_400s_naming_the_param(
    tool_stage: bool, kwargs: dict[str, Any], param: str
) -> None:
    gw = gateway({"big": llm("big", calls(GOOD), tools=tool_stage)})
    with pytest.raises(InvalidRequestError) as err:
        complete(gw, request(**kwargs))
    assert error_response(err.value)[0] == 400
    assert err.value.param == param


@pytest.mark.parametrize(
    ("cascade", "message", "field"),
    [
        ({"tools": {"stages": ["nope"]}}, "unknown stages", "cascades.0"),
        ({"tools": {"stages": ["small"]}}, "does not take tools", "cascades.0.tools.stages"),
        ({"task": "classify", "tools": {}}, "tools are for chat cascades", "cascades.0"),
    ],
)
def test_tool_settings_errors_name_file_and_field(
    tmp_path: Path, cascade: dict[str, Any], message: str, field: str
) -> None:
    path = tmp_path / "gw.yaml"
    stages = [{"name": n, "model": {"kind": "fake_llm", "ref": n}} for n in ("small", "big")]
    path.write_text(json.dumps({"cascades": [{"name": "agent", "stages": stages, **cascade}]}))
    llms = {"small": llm("small", text("hi")), "big": llm("big", calls(GOOD), tools=True)}
    with pytest.raises(ConfigError, match=message) as err:
        Gateway.from_config(load_gateway_config(path), resources={"llms": llms})
    assert str(path.name) in str(err.value) and field in str(err.value)


# --------------------------------------------------------------------------- streaming


def stream_events(gw: Gateway, req: ChatCompletionRequest) -> list[Any]:
    async def go() -> list[bytes]:
        served = await OpenAIServingChat(gw).create_chat_completion(req, ME, request_id="s1")
        assert served.stream is not None
        return [c async for c in served.stream]

    raw = b"".join(asyncio.run(go()))
    out: list[Any] = []
    for part in raw.split(b"\n\n"):
        if part.startswith(b"data: "):
            data = part[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    assert raw.endswith(DONE)
    return out


def test_a_streamed_tool_call_arrives_in_pieces_that_add_up_as_openai_streams_them() -> None:
    long_call = tool_call("get_weather", {"city": "Llanfairpwllgwyngyll " * 8}, "call_long")
    gw = gateway({"big": llm("big", calls(long_call, GOOD), tools=True)})
    events = stream_events(gw, request(stream=True))
    assert events[-1] == "[DONE]"
    chunks = [construct_type(type_=oai_chat.ChatCompletionChunk, value=e) for e in events[:-1]]
    got: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in c.choices[0].delta.tool_calls or []:
            entry = got.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += d.id or ""
            assert d.function is not None
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
    assert got[0] == {
        "id": "call_long",
        "name": "get_weather",
        "arguments": long_call["function"]["arguments"],
    }
    assert got[1]["id"] == "call_good" and json.loads(got[1]["arguments"]) == {"city": "Paris"}
    assert sum(1 for e in events[:-1] if e["choices"][0]["delta"].get("tool_calls")) > 3
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert events[-2]["tiered"]["stage"] == "big"


def test_the_fake_upstream_calls_tools_as_openai_does_streamed_or_not() -> None:
    with FakeUpstream() as up, oai(up.base_url.removesuffix("/v1")) as client:
        resp = client.chat.completions.create(model="tools-call", messages=ASK, tools=[WEATHER])
        (call,) = resp.choices[0].message.tool_calls or []
        assert resp.choices[0].finish_reason == "tool_calls"
        assert json.loads(call.function.arguments) == {"city": "test"}  # the required one
        with client.chat.completions.stream(
            model="tools-garbled", messages=ASK, tools=[WEATHER]
        ) as stream:
            got = stream.get_final_completion().choices[0].message.tool_calls or []
        assert got[0].function.arguments == '{"unfinished": '
        text = client.chat.completions.create(model="other", messages=ASK, tools=[WEATHER])
        assert text.choices[0].message.content == "echo: Weather in Paris?"


# --------------------------------------------------------------------------- end to end


def agent(name: str, cheap_model: str, url: str) -> str:
    """A cascade entry: a cheap and a strong tool stage on the fake upstream."""
    common = f"base_url: '{url}', api_key_env: null, mode: generate, normalizer: exact, " + (
        "tools: true, max_retries: 0, cache: false"
    )
    return f"""
  - name: {name}
    stages:
      - {{name: cheap, model: {{kind: openai, model: {cheap_model}, {common}}}}}
      - {{name: strong, model: {{kind: openai, model: tools-call, {common}}}}}
"""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeUpstream]]:
    """``tiered serve`` with two agent cascades: a cheap stage that calls tools well, and
    one whose calls are garbled (so the strong stage answers)."""
    up = FakeUpstream().start_in_thread()
    tmp = tmp_path_factory.mktemp("tools")
    cfg = tmp / "gateway.yaml"
    url = up.base_url
    cfg.write_text(
        "cascades:" + agent("agent", "tools-call", url) + agent("agent-b", "tools-garbled", url),
        encoding="utf-8",
    )
    proc, base = launch(cfg, tmp / "gateway.log", {}, timeout_s=120)
    try:
        yield base, up
    finally:
        proc.terminate()
        proc.wait(20)
        up.stop_thread()


def oai(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.mark.slow
def test_the_official_client_gets_tool_calls_and_runs_an_agent_turn(
    e2e: tuple[str, FakeUpstream],
) -> None:
    base, up = e2e
    with oai(base) as client:
        resp = client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER])
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.id.startswith("call_") and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "test"}
        assert resp.model_extra is not None and resp.model_extra["tiered"]["stage"] == "cheap"
        assert up.seen[-1].body["tools"] == [WEATHER]
        # the client runs the tool and sends its result back: a text answer
        history = [
            *ASK,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18}'},
        ]
        final = client.chat.completions.create(model="agent", messages=history, tools=[WEATHER])
        assert final.choices[0].finish_reason == "stop"
        assert final.choices[0].message.content == 'echo: {"temp": 18}'
        assert up.seen[-1].body["messages"][-1]["tool_call_id"] == call.id


@pytest.mark.slow
def test_a_garbled_call_is_answered_by_the_strong_stage_streamed_too(
    e2e: tuple[str, FakeUpstream],
) -> None:
    base, _ = e2e
    with oai(base) as client:
        resp = client.chat.completions.create(model="agent-b", messages=ASK, tools=[WEATHER])
        assert resp.model_extra is not None
        assert [t["stage"] for t in resp.model_extra["tiered"]["trace"]] == ["cheap", "strong"]
        with client.chat.completions.stream(
            model="agent-b", messages=ASK, tools=[WEATHER]
        ) as stream:
            done = stream.get_final_completion()
        (call,) = done.choices[0].message.tool_calls or []
        assert done.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "test"}
