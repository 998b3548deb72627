"""The gateway's hot path: completion endpoints dispatched before FastAPI's router, and a
response's head and body sent in one write. Both must leave what clients and operators
see unchanged: middleware, error bodies, metrics, logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiered.core import AnswerBatch, Item, ModelTags, register_model
from tiered.serve import Gateway, build_app
from tiered.serve.api_server import _CoalescingTransport, header_timeout_protocol
from tiered.serve.config import GatewayConfig

CHAT = {"model": "hot", "messages": [{"role": "user", "content": "hi"}]}


class Answers:
    """An async stage answering a fixed text, or raising ``error`` (a bug, not a ModelError)."""

    tags = ModelTags(generates_text=True, asynchronous=True)

    def __init__(self, error: Exception | None = None) -> None:
        self.name = "answers"
        self.error = error

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        raise AssertionError("the gateway must await apredict")

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        if self.error is not None:
            raise self.error
        return AnswerBatch.from_labels(["a hot answer"] * len(items))


register_model("hot_path_fake")(lambda spec, ctx: ctx.resources["hot_path_fake"])


def gateway(model: Answers | None = None) -> Gateway:
    cfg = GatewayConfig.model_validate(
        {
            "cascades": [
                {"name": "hot", "stages": [{"name": "only", "model": {"kind": "hot_path_fake"}}]}
            ]
        }
    )
    return Gateway.from_config(cfg, resources={"hot_path_fake": model or Answers()})


def requests_metric(client: TestClient, endpoint: str, status: int) -> float:
    text = client.get("/metrics").text
    line = f'tiered_requests_total{{endpoint="{endpoint}",status="{status}"}}'
    for row in text.splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


class Stamp:
    """Middleware a user adds after build_app: stamps every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


# --------------------------------------------------------------------------- dispatch


def test_middleware_added_after_build_app_wraps_the_completion_endpoints() -> None:
    app = build_app(gateway())
    app.add_middleware(Stamp)
    with TestClient(app) as client:
        for path, body in (
            ("/v1/chat/completions", CHAT),
            ("/v1/completions", {"model": "hot", "prompt": "hi"}),
        ):
            r = client.post(path, json=body)
            assert r.status_code == 200, r.text
            assert r.headers["x-stamp"] == "1"
        assert client.get("/health").headers["x-stamp"] == "1"


def test_errors_on_the_completion_endpoints_are_openai_errors_and_counted() -> None:
    with TestClient(build_app(gateway())) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        assert r.headers["x-tiered-request-id"]
        r = client.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert requests_metric(client, "/v1/chat/completions", 404) == 1
        assert requests_metric(client, "/v1/chat/completions", 400) == 1


def test_a_bug_in_a_stage_is_a_500_openai_error_counted_logged_and_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_app(gateway(Answers(error=KeyError("private detail"))))
    with TestClient(app, raise_server_exceptions=False) as client:
        with caplog.at_level(logging.INFO, logger="tiered.serve"):
            r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        assert "private detail" not in r.text
        assert r.headers["x-tiered-request-id"]
        assert requests_metric(client, "/v1/chat/completions", 500) == 1
    assert "unhandled error in the gateway" in caplog.text
    assert "status=500" in caplog.text
    # as for any route: the exception reaches the server (which logs it) after the answer
    app = build_app(gateway(Answers(error=KeyError("x"))))
    with TestClient(app) as client, pytest.raises(KeyError):
        client.post("/v1/chat/completions", json=CHAT)


def test_request_ids_are_the_clients_when_sane_else_fresh_random_hex() -> None:
    with TestClient(build_app(gateway())) as client:
        ids = [
            client.post("/v1/chat/completions", json=CHAT).headers["x-tiered-request-id"]
            for _ in range(3)
        ]
        assert len(set(ids)) == 3
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        given = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "mine-1"})
        assert given.headers["x-tiered-request-id"] == "mine-1"
        assert given.json()["id"] == "chatcmpl-mine-1"
        odd = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "a b"})
        assert len(odd.headers["x-tiered-request-id"]) == 32


def test_other_methods_on_the_completion_paths_still_go_through_the_router() -> None:
    with TestClient(build_app(gateway())) as client:
        assert client.get("/v1/chat/completions").status_code == 405
        assert client.post("/v1/unknown", json=CHAT).status_code == 404


# --------------------------------------------------------------------------- one write


class Recorder:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_writes_within_one_loop_turn_go_out_as_one() -> None:
    async def run() -> Recorder:
        inner = Recorder()
        t = _CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"head ")
        t.write(b"body")
        assert inner.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        t.write(b"late")
        t.close()  # flushes what is held first
        t.write(b"after close")
        await asyncio.sleep(0)
        return inner

    inner = asyncio.run(run())
    assert inner.writes == [b"head body", b"late"]
    assert inner.closed


def test_an_aborted_connection_drops_what_is_held() -> None:
    async def run() -> Recorder:
        inner = Recorder()
        t = _CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"never sent")
        t.abort()
        await asyncio.sleep(0)
        return inner

    inner = asyncio.run(run())
    assert inner.writes == [] and inner.aborted


def test_the_servers_protocol_sends_a_whole_answer_in_one_write() -> None:
    import uvicorn
    from uvicorn.server import ServerState

    cls = header_timeout_protocol(5.0)
    assert cls is not None
    app = build_app(gateway())
    config = uvicorn.Config(app, http=cls, log_level="warning", access_log=False)
    config.load()

    async def run() -> Recorder:
        inner = Recorder()
        protocol = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
        protocol.connection_made(inner)  # type: ignore[arg-type]
        body = json.dumps(CHAT).encode()
        protocol.data_received(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        for _ in range(200):
            await asyncio.sleep(0.01)
            if inner.writes:
                break
        await asyncio.sleep(0.05)  # nothing more follows
        protocol.connection_lost(None)
        return inner

    inner = asyncio.run(run())
    assert len(inner.writes) == 1, inner.writes
    head, _, payload = inner.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(payload)["choices"][0]["message"]["content"] == "a hot answer"
