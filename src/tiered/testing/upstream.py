"""A fake OpenAI-compatible server on loopback that can misbehave on purpose.

It speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies) to serve
``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` fast (a
plain ``asyncio.Protocol``: a benchmark measures the gateway, not its upstream). It runs
on the caller's loop (``async with``) or in a thread of its own (``with``).

The normal answer is ``responder(request_json)`` (a whole response body) when given, else
built from ``answer`` (a string, or a function of the request's JSON): by default
``"echo: "`` + the last message. When the request asks for ``logprobs``, the answer's
first token gets ``logprob`` and the other ``labels`` share the rest. A request with
``"stream": true`` is answered with server-sent events.

A chat request that declares ``tools`` is answered with the tool calls ``tool_calls``
gives (a list of :func:`~tiered.testing.bodies.tool_call` dicts, or a function of the
request's JSON returning one or None for a text answer), or by model name: ``tools-call``
calls the forced or first declared function with arguments fitting its schema (and
answers in text once the last message is a tool's result, as an agent's model does),
``tools-garbled`` calls it with arguments that are not JSON.

Faults come from a script (:meth:`FakeUpstream.then` queues :class:`Reply` objects,
played one per request before normal answers resume) or, with no state at all, from the
requested *model name* (what a gateway config can set):

| model | reply |
| --- | --- |
| ``fail-<status>`` | that status with an OpenAI error body |
| ``ratelimit-<s>`` | 429 with ``Retry-After: <s>`` |
| ``slow-<ms>`` | the normal answer after ``ms`` milliseconds |
| ``hang`` | nothing, until the client gives up |
| ``garbage`` | 200 with a body that is not JSON |
| ``cut`` | the normal answer's head, half its body, then the connection closes |
| ``huge-<bytes>`` | a valid answer padded to ``bytes`` (streamed, never held in memory) |
| ``overuse-<tokens>`` | the normal answer reporting ``tokens`` prompt and completion tokens |
| ``sse-stop`` | an event stream that stops after one event, without ``[DONE]`` |

>>> import asyncio
>>> async def demo() -> int:
...     async with FakeUpstream(answer="hi") as up:
...         return up.port
>>> asyncio.run(demo()) > 0
True
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tiered.testing.bodies import (
    call_first_tool,
    chat_body,
    completion_body,
    label_logprobs,
    last_text,
)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}
_CHUNK = 1 << 16

Answer = str | Callable[[dict[str, Any]], str]
Responder = Callable[[dict[str, Any]], dict[str, Any] | str]
ToolCalls = list[dict[str, Any]]
ToolAnswer = ToolCalls | Callable[[dict[str, Any]], ToolCalls | None]


@dataclass(frozen=True)
class Reply:
    """One scripted reply. ``body`` None means the normal answer (see the module docstring)."""

    status: int = 200
    body: dict[str, Any] | str | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False  # never answer
    cut_after: int | None = None  # close the connection after this many body bytes
    pad_to: int | None = None  # a valid answer padded to this many bytes
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens reported instead
    sse_events: int | None = None  # an event stream that stops after this many events

    @classmethod
    def error(cls, status: int, message: str | None = None) -> Reply:
        return cls(status, _error(message or f"injected failure {status}", "injected"))

    @classmethod
    def rate_limited(cls, retry_after: float | str = 1) -> Reply:
        msg = _error("rate limited", "rate_limit_exceeded")
        return cls(429, msg, headers={"retry-after": str(retry_after)})

    @classmethod
    def hanging(cls) -> Reply:
        return cls(hang=True)

    @classmethod
    def malformed(cls) -> Reply:
        return cls(200, b"{not json")

    @classmethod
    def cut(cls, after: int = 10) -> Reply:
        return cls(cut_after=after)

    @classmethod
    def huge(cls, size: int) -> Reply:
        return cls(pad_to=size)

    @classmethod
    def over_usage(cls, tokens: int) -> Reply:
        return cls(usage=(tokens, tokens))

    @classmethod
    def sse_stop(cls, after: int = 1) -> Reply:
        return cls(sse_events=after)


def fault_for_model(model: str) -> Reply | None:
    """The fault a model name asks for (see the module docstring), or None."""
    name, _, arg = model.partition("-")
    try:
        if name == "fail" and arg:
            return Reply.error(int(arg))
        if name == "ratelimit" and arg:
            return Reply.rate_limited(arg)
        if name == "slow" and arg:
            return Reply(delay_s=float(arg) / 1000.0)
        if name == "huge" and arg:
            return Reply.huge(int(arg))
        if name == "overuse" and arg:
            return Reply.over_usage(int(arg))
    except ValueError:
        return None
    return {
        "hang": Reply.hanging(),
        "garbage": Reply.malformed(),
        "cut": Reply.cut(),
        "sse-stop": Reply.sse_stop(),
    }.get(model)


@dataclass
class Seen:
    """A request the server received."""

    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


_SIMPLE = Reply()


class _Conn(asyncio.Protocol):
    """One client connection: requests answered in order, faults played as tasks."""

    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[int, bytes, Reply, dict[str, Any]]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.transport = None
        self.writable.set()
        self.server._conns.discard(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = self.buf[:head_end].decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4 : end]
            self.buf = self.buf[end:]
            status, payload, plan, request = self.server.respond(
                method, path.split("?", 1)[0], body, headers
            )
            simple = plan is _SIMPLE and not request.get("stream")
            if simple and self.worker is None and not self.queue:
                self.write_response(status, payload)  # the fast path: no task
            else:
                self.queue.append((status, payload, plan, request))
                if self.worker is None:
                    self.worker = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue and self.transport is not None:
                status, payload, plan, request = self.queue.popleft()
                await self._play(status, payload, plan, request)
        finally:
            self.worker = None

    async def _play(
        self, status: int, payload: bytes, plan: Reply, request: dict[str, Any]
    ) -> None:
        if plan.hang:
            await asyncio.Event().wait()  # until the connection goes
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s)
        if plan.sse_events is not None or (request.get("stream") and status == 200):
            await self._stream(request, plan.sse_events)
        elif plan.pad_to is not None:
            await self._padded(status, payload, plan.pad_to)
        elif plan.cut_after is not None:
            self.write_head(status, len(payload), plan.headers)
            self.write(payload[: min(plan.cut_after, len(payload) // 2)])
            self.close()
        else:
            self.write_response(status, payload, plan.headers)

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def write_head(
        self,
        status: int,
        length: int | None,
        headers: Mapping[str, str] = {},
        content_type: str = "application/json",
    ) -> None:
        reason = _REASONS.get(status, "Error")
        lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}"]
        lines.append(f"content-length: {length}" if length is not None else "connection: close")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def write_response(
        self,
        status: int,
        payload: bytes,
        headers: Mapping[str, str] = {},
    ) -> None:
        self.write_head(status, len(payload), headers)
        self.write(payload)

    async def _padded(self, status: int, payload: bytes, size: int) -> None:
        """``payload`` (a JSON object) with a ``padding`` field making it ``size`` bytes."""
        prefix = b'{"padding":"'
        suffix = b'",' + payload[1:] if payload.startswith(b"{") else b'"}'
        fill = max(size - len(prefix) - len(suffix), 0)
        self.write_head(status, len(prefix) + fill + len(suffix))
        self.write(prefix)
        block = b"x" * _CHUNK
        while fill > 0 and self.transport is not None:
            await self.writable.wait()  # the client's pace: never more than a buffer held
            self.write(block[: min(fill, _CHUNK)])
            fill -= _CHUNK
        self.write(suffix)

    async def _stream(self, request: dict[str, Any], stop_after: int | None) -> None:
        """The answer as chat/completions chunks; with ``stop_after``, cut off early."""
        self.write_head(200, None, content_type="text/event-stream")
        chat = "messages" in request
        calls = self.server.tool_calls_for(request) if chat else None
        if calls:
            deltas = _tool_call_deltas(calls)
        else:
            text = self.server.text_for(request)
            pieces = [text[i : i + 8] for i in range(0, len(text), 8)] or [""]
            deltas = [{"content": piece} if chat else {"text": piece} for piece in pieces]
        finish = "tool_calls" if calls else "stop"
        envelope = {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": str(request.get("model", "fake")),
        }
        for k, delta in enumerate([*deltas, None]):
            if stop_after is not None and k >= stop_after:
                self.close()
                return
            choice: dict[str, Any]
            if delta is None:  # the last chunk: why the answer ended
                choice = {"index": 0, "finish_reason": finish}
                if chat:
                    choice["delta"] = {}
                else:
                    choice["text"] = ""
            else:
                choice = {"index": 0, "delta": delta} if chat else {"index": 0, **delta}
                choice["finish_reason"] = None
            event = {**envelope, "choices": [choice]}
            self.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await asyncio.sleep(0)
        if stop_after is not None:
            self.close()
            return
        self.write(b"data: [DONE]\n\n")
        self.close()


class FakeUpstream:
    """An OpenAI-compatible fake on ``127.0.0.1`` (see the module docstring)."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        answer: Answer | None = None,
        labels: list[str] | None = None,
        logprob: float = -0.05,
        tool_calls: ToolAnswer | None = None,
        record: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.responder = responder
        self.answer = answer
        self.labels = labels or []
        self.logprob = logprob
        self.tool_calls = tool_calls
        self.record = record  # off for long-lived servers (memory checks, benchmarks)
        self.host = host
        self.port = port
        self.calls = 0  # completion requests received
        self.seen: list[Seen] = []
        self.script: deque[Reply] = deque()
        self._conns: set[_Conn] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"FakeUpstream(base_url={self.base_url!r}, calls={self.calls})"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def then(self, *replies: Reply) -> FakeUpstream:
        """Play ``replies``, one per completion request, before answering normally again."""
        self.script.extend(replies)
        return self

    # ------------------------------------------------------------------ answers

    def text_for(self, body: dict[str, Any]) -> str:
        if self.answer is None:
            return "echo: " + last_text(body)
        return self.answer if isinstance(self.answer, str) else self.answer(body)

    def tool_calls_for(self, body: dict[str, Any]) -> ToolCalls | None:
        """The tool calls answering a request that declares tools; None: a text answer."""
        if not body.get("tools"):
            return None
        model = body.get("model")
        if model in ("tools-call", "tools-garbled"):
            last = (body.get("messages") or [{}])[-1]
            if isinstance(last, dict) and last.get("role") == "tool":
                return None
            calls = call_first_tool(body)
            if calls and model == "tools-garbled":
                calls[0]["function"]["arguments"] = '{"unfinished": '
            return calls
        made = self.tool_calls(body) if callable(self.tool_calls) else self.tool_calls
        return [dict(c) for c in made] if made else None

    def respond(
        self, method: str, path: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, Reply, dict[str, Any]]:
        """Status, body, how to deliver them, and the request's JSON."""
        if method == "GET" and path.endswith("/models"):
            card = {"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}
            return 200, json.dumps({"object": "list", "data": [card]}).encode(), _SIMPLE, {}
        if method != "POST" or not path.endswith(("/chat/completions", "/completions")):
            return 404, _error(f"no route {method} {path}", "not_found"), _SIMPLE, {}
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, _error("body is not JSON", "invalid_json"), _SIMPLE, {}
        if not isinstance(body, dict):
            return 400, _error("body is not a JSON object", "invalid_json"), _SIMPLE, {}
        self.calls += 1
        if self.record:
            self.seen.append(Seen(method, path, body, headers))
        plan = self.script.popleft() if self.script else None
        if plan is None:
            plan = fault_for_model(str(body.get("model", ""))) or _SIMPLE
        if plan.body is not None:
            b = plan.body
            payload = (
                b
                if isinstance(b, bytes)
                else (b.encode() if isinstance(b, str) else json.dumps(b).encode())
            )
            return plan.status, payload, plan, body
        answer = self._answer(body, path.endswith("/chat/completions"), plan.usage)
        return plan.status, answer, plan, body

    def _answer(self, body: dict[str, Any], chat: bool, usage: tuple[int, int] | None) -> bytes:
        if self.responder is not None:
            data = self.responder(body)
            if isinstance(data, str):
                return data.encode()
        else:
            calls = self.tool_calls_for(body) if chat else None
            text = "" if calls else self.text_for(body)
            counts = (len(last_text(body)) // 4 + 1, len(text) // 4 + 1)
            top = body.get("top_logprobs") if chat else body.get("logprobs")
            tokens = None
            if body.get("logprobs") and not calls:
                lp = label_logprobs(text, self.labels, self.logprob, int(top or 1))[0]
                alts = {t["token"]: t["logprob"] for t in lp["top_logprobs"]}
                tokens = [(text, self.logprob, alts)]
            model = str(body.get("model", "fake"))
            if chat:
                data = chat_body(text, tokens, usage=counts, model=model, tool_calls=calls)
            else:
                data = completion_body(text, tokens, usage=counts, model=model)
        if usage is not None:
            p, c = usage
            data["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return json.dumps(data).encode()

    # ------------------------------------------------------------------ running

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):  # hanging clients see the connection close
            conn.close()

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeUpstream:
        """Serve from a daemon thread with its own event loop (for sync callers)."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.run_until_complete(asyncio.sleep(0))  # let the closed connections go
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


def _tool_call_deltas(calls: ToolCalls) -> list[dict[str, Any]]:
    """Stream deltas of ``calls`` as OpenAI sends them: id and name, then argument pieces."""
    out: list[dict[str, Any]] = [{"role": "assistant", "content": None}]
    for j, call in enumerate(calls):
        fn = call["function"]
        head = {"index": j, "id": call["id"], "type": "function"}
        out.append({"tool_calls": [{**head, "function": {"name": fn["name"], "arguments": ""}}]})
        args = fn["arguments"]
        out += [
            {"tool_calls": [{"index": j, "function": {"arguments": args[i : i + 8]}}]}
            for i in range(0, len(args), 8)
        ]
    return out


def _error(message: str, code: str) -> bytes:
    err = {"error": {"message": message, "type": "fake_error", "param": None, "code": code}}
    return json.dumps(err).encode()


__all__ = ["FakeUpstream", "Reply", "Seen", "fault_for_model"]
