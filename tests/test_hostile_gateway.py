"""Slow and vanishing clients against the running gateway (``tiered serve`` in a subprocess).

Every wait for a client has a bound: headers within ``header_timeout_s`` (else the
connection is closed), the body within ``body_timeout_s`` once the headers are in (else
a 408 and the connection is closed). A client that leaves mid-body is logged as a 499
on one line, never as a 500 with a traceback. Requests from other clients go on.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.test_serve_e2e import launch
from tiered.testing import FakeUpstream

pytestmark = pytest.mark.slow

N_CLIENTS = 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway with one-second client timeouts; yields its base URL and its log file."""
    tmp = tmp_path_factory.mktemp("hostile")
    with FakeUpstream(answer="fine") as up:
        stage = {
            "name": "only",
            "model": {
                "kind": "openai",
                "base_url": up.base_url,
                "model": "fake",
                "mode": "generate",
                "api_key_env": None,
                "max_retries": 0,
            },
        }
        config = {
            "server": {"header_timeout_s": 1, "body_timeout_s": 1, "max_in_flight": 512},
            "cascades": [{"name": "echo", "stages": [stage]}],
        }
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
        log = tmp / "gateway.log"
        proc, base = launch(cfg, log, {}, timeout_s=120)
        try:
            yield base, log
        finally:
            proc.terminate()
            proc.wait(20)


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _head(length: int) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (30 s at most)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _chat(base: str) -> int:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30).status_code


def test_stalled_bodies_get_408_and_are_closed(gateway: tuple[str, Path]) -> None:
    base, _ = gateway
    socks = [_connect(base) for _ in range(N_CLIENTS)]
    for s in socks:
        s.sendall(_head(1000) + b'{"model": "echo"')  # and then nothing
    answers = [_read_all(s) for s in socks]  # returns only once the server closed it
    for s in socks:
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0][:200]
    body = json.loads(answers[0].split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    assert _chat(base) == 200  # the others are served all along


def test_slow_or_silent_headers_are_cut_off(gateway: tuple[str, Path]) -> None:
    base, _ = gateway
    silent = _connect(base)
    slow = _connect(base)
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")  # never finished
    assert _read_all(silent) == b"" and _read_all(slow) == b""  # closed, not left open
    silent.close()
    slow.close()
    assert _chat(base) == 200


def test_clients_leaving_mid_body_are_499s_not_500s_with_tracebacks(
    gateway: tuple[str, Path],
) -> None:
    base, log = gateway
    for _ in range(N_CLIENTS):
        s = _connect(base)
        s.sendall(_head(1000) + b'{"model": "ec')
        s.close()
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        if text.count("status=499") >= N_CLIENTS:
            break
        time.sleep(0.2)
    assert text.count("status=499") >= N_CLIENTS
    assert "Traceback" not in text and "status=500" not in text
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'status="500"' not in metrics
    assert _chat(base) == 200
