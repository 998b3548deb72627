"""A tiny OpenAI-compatible server on loopback, for tests, benchmarks and config checks.

It speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies) to serve
``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` fast: a
plain ``asyncio.Protocol``, no framework, so that a benchmark measures the gateway and
not its upstream. The requested *model name* picks the behaviour (fault injection
needs no state):

| model | answer |
| --- | --- |
| ``fail-<status>`` (``fail-500``, ``fail-429``) | that status with an OpenAI error body |
| ``slow-<ms>`` (``slow-200``) | the normal answer after ``ms`` milliseconds |
| ``hang`` | nothing, until the client gives up |
| ``garbage`` | 200 with a body that is not JSON |
| anything else | the normal answer |

The normal answer is ``answer`` (a string, or a function of the request's JSON body),
by default ``"echo: "`` + the last message (or the prompt). When the request asks for
``logprobs``, the answer comes with log-probabilities: the answer's first token gets
``logprob`` and the other ``labels`` share the rest.

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
import math
import threading
import time
from collections.abc import Callable
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}

Answer = str | Callable[[dict[str, Any]], str]


def _last_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        msgs = body.get("messages") or [{}]
        content = msgs[-1].get("content", "")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else str(prompt[0] if prompt else "")


class _Conn(asyncio.Protocol):
    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.tasks:
            t.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4 : end]
            self.buf = self.buf[end:]
            self.server.requests += 1
            status, payload, delay = self.server.respond(method, path.split("?", 1)[0], body)
            if delay is None and status:
                self._write(status, payload)
            else:
                task = asyncio.ensure_future(self._later(status, payload, delay))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _later(self, status: int, payload: bytes, delay: float | None) -> None:
        if delay is None or math.isinf(delay):
            await asyncio.Event().wait()  # hang until the connection goes
            return
        await asyncio.sleep(delay)
        self._write(status, payload)

    def _write(self, status: int, payload: bytes) -> None:
        if self.transport is None:
            return
        reason = _REASONS.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + payload)


class FakeUpstream:
    """An OpenAI-compatible fake on ``127.0.0.1`` (see the module docstring)."""

    def __init__(
        self,
        *,
        answer: Answer | None = None,
        labels: list[str] | None = None,
        logprob: float = -0.05,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.answer = answer
        self.labels = labels or []
        self.logprob = logprob
        self.host = host
        self.port = port
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = False
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------------ answers

    def text_for(self, body: dict[str, Any]) -> str:
        if self.answer is None:
            return "echo: " + _last_text(body)
        return self.answer if isinstance(self.answer, str) else self.answer(body)

    def respond(self, method: str, path: str, raw: bytes) -> tuple[int, bytes, float | None]:
        """Status, body and delay (seconds; None with status 0 means hang)."""
        if method == "GET" and path.endswith("/models"):
            card = {"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}
            data = {"object": "list", "data": [card]}
            return 200, json.dumps(data).encode(), None
        if method != "POST" or not path.endswith(("/chat/completions", "/completions")):
            return 404, _error(f"no route {method} {path}", "not_found"), None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, _error("body is not JSON", "invalid_json"), None
        if self.keep_bodies:
            self.bodies.append(body)
        model = str(body.get("model", ""))
        delay: float | None = None
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-") or 500)
            return status, _error(f"injected failure {status}", "injected"), None
        if model == "hang":
            return 0, b"", None
        if model == "garbage":
            return 200, b"{not json", None
        if model.startswith("slow-"):
            delay = float(model.removeprefix("slow-")) / 1000.0
        text = self.text_for(body)
        chat = path.endswith("/chat/completions")
        payload = self._completion(body, text, chat)
        return 200, json.dumps(payload).encode(), delay

    def _logprobs(self, text: str, top: int) -> list[dict[str, Any]]:
        others = [lab for lab in self.labels if lab != text][: max(top - 1, 0)]
        rest = math.log(max(1 - math.exp(self.logprob), 1e-12) / max(len(others), 1))
        tops = [{"token": text, "logprob": self.logprob, "bytes": None}]
        tops += [{"token": o, "logprob": rest, "bytes": None} for o in others]
        return [{"token": text, "logprob": self.logprob, "bytes": None, "top_logprobs": tops}]

    def _completion(self, body: dict[str, Any], text: str, chat: bool) -> dict[str, Any]:
        n_in = len(_last_text(body)) // 4 + 1
        n_out = len(text) // 4 + 1
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        created = int(time.time())
        lp: dict[str, Any] | None = None
        if chat:
            if body.get("logprobs"):
                lp = {"content": self._logprobs(text, int(body.get("top_logprobs") or 1))}
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": lp,
                "finish_reason": "stop",
            }
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": body.get("model", "fake"),
                "choices": [choice],
                "usage": usage,
            }
        lp = None
        if body.get("logprobs"):
            entries = self._logprobs(text, int(body["logprobs"]))
            lp = {
                "tokens": [text],
                "token_logprobs": [self.logprob],
                "top_logprobs": [{e["token"]: e["logprob"] for e in entries[0]["top_logprobs"]}],
                "text_offset": [0],
            }
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": "stop"}
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": created,
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": usage,
        }

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

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeUpstream:
        """Serve from a daemon thread with its own event loop (for sync tests)."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
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


def _error(message: str, code: str) -> bytes:
    err = {"error": {"message": message, "type": "fake_error", "param": None, "code": code}}
    return json.dumps(err).encode()


__all__ = ["FakeUpstream"]
