"""A small OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib only).

It answers ``/v1/chat/completions`` and ``/v1/completions`` from a ``responder``
function of the request body, after first playing any scripted :class:`Reply` (a 429, a
500, a slow answer that times out, malformed JSON). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted reply; ``body`` None means 'answer normally' (after ``delay_s``)."""

    status: int = 200
    body: dict[str, Any] | str | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


Token = tuple[str, float, dict[str, float]]  # token, its logprob, top alternatives


def chat_body(text: str, tokens: list[Token] | None = None, n: int = 1) -> dict[str, Any]:
    logprobs = None
    if tokens is not None:
        logprobs = {
            "content": [
                {
                    "token": t,
                    "logprob": lp,
                    "top_logprobs": [{"token": a, "logprob": b} for a, b in top.items()],
                }
                for t, lp, top in tokens
            ]
        }
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}
    return {
        "id": "fake",
        "object": "chat.completion",
        "model": "fake",
        "choices": [{**choice, "index": i} for i in range(n)],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2 * n, "total_tokens": 10 + 2 * n},
    }


def completion_body(text: str, tokens: list[Token] | None = None) -> dict[str, Any]:
    logprobs = None
    if tokens is not None:
        logprobs = {
            "tokens": [t for t, _, _ in tokens],
            "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens],
            "text_offset": list(range(len(tokens))),
        }
    return {
        "id": "fake",
        "object": "text_completion",
        "model": "fake",
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def prompt_text(body: dict[str, Any]) -> str:
    """The text a request asks about (its prompt, or its messages joined)."""
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


def sentiment_responder(body: dict[str, Any]) -> dict[str, Any]:
    """'good' in the text → positive (p≈0.9), 'bad' → negative, else an off-label answer."""
    text = prompt_text(body).rsplit("Text:", 1)[-1]
    if "good" in text:
        word, tokens = "positive", [(" positive", -0.1, {" positive": -0.1, " negative": -2.4})]
    elif "bad" in text:
        word, tokens = "negative", [(" negative", -0.2, {" negative": -0.2, " positive": -1.8})]
    else:
        word, tokens = "banana", [(" banana", -0.05, {" banana": -0.05, " the": -3.5})]
    if "prompt" in body:
        return completion_body(" " + word, tokens)
    # chat models answer without the leading space, capitalised
    chat_tokens = [
        (t.strip().capitalize(), lp, {a.strip().capitalize(): b for a, b in top.items()})
        for t, lp, top in tokens
    ]
    return chat_body(word.capitalize(), chat_tokens)


class FakeOpenAI:
    """The server; use as a context manager. ``url`` is the base URL (ending in /v1)."""

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        record: bool = True,
    ) -> None:
        self.responder = responder or sentiment_responder
        self.record = record  # off for long-lived servers (memory checks)
        self.count = 0
        self.script: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw or b"{}")
                with fake._lock:
                    fake.count += 1
                    if fake.record:
                        fake.seen.append(
                            Seen(self.path, body, {k.lower(): v for k, v in self.headers.items()})
                        )
                    reply = fake.script.popleft() if fake.script else Reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.body if reply.body is not None else fake.responder(body)
                data = (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                )
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def then(self, *replies: Reply) -> FakeOpenAI:
        self.script.extend(replies)
        return self

    @property
    def calls(self) -> int:
        return self.count
