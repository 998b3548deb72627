"""Gateway overhead and throughput, on loopback only, with a bounded request count.

    .venv/bin/python benchmarks/gateway.py [--requests 2000] [--concurrency 64]
                                           [--sequential 1000] [--client openai|http]

A fast in-process fake upstream (:class:`tiered.testing.FakeUpstream`, a
plain asyncio HTTP server) answers chat completions; the gateway runs as a separate
process (``tiered serve`` on a one-stage cascade whose stage calls that upstream). The
benchmark, an ``httpx.AsyncClient``, then measures

0. **the app alone**: CPU time per request of the gateway's ASGI app called in-process
   with an in-memory stage (no sockets): the gateway's own work, least sensitive to a
   busy machine;
1. **added latency**: sequential requests, alternating a direct upstream call and the
   same call through the gateway; the gateway's added latency is the difference of the
   two latency distributions' percentiles (target: p50 < 2 ms);
2. **throughput and errors at 64 concurrent clients**: ``--requests`` requests from
   ``--concurrency`` tasks through the gateway (target: no errors), and the same load
   straight to the upstream for reference.

The stage's upstream client is ``--client openai`` (tiered's ``OpenAIChat`` stage, kind
``openai``, posting through aiohttp: what users run) or ``--client raw`` (a minimal
asyncio HTTP/1.1 client defined here: the gateway's own cost, without any HTTP library's).

Every request sends the same prompt, so at 64 clients the ``openai`` stage joins most of
them into one upstream call (identical requests of one key in flight at once are sent
once); the concurrent phase reports how many upstream calls it took. ``--distinct`` gives
every request a prompt of its own: one upstream call per request, the worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from tiered.testing import FakeUpstream

PAYLOAD = {
    "model": "fake",
    "messages": [{"role": "user", "content": "Is the gateway fast enough?"}],
    "max_tokens": 16,
}


# --------------------------------------------------------------------------- the stage client


class RawChat:
    """A minimal OpenAI chat client stage, registered as kind ``bench_raw``.

    Plain asyncio streams over a pool of keep-alive HTTP/1.1 connections: no HTTP
    library at all, so what remains is the gateway's own cost (framework, cascade
    engine, serving classes) plus the two extra loopback hops.
    """

    def __init__(self, spec: dict[str, Any], ctx: Any) -> None:
        from urllib.parse import urlsplit

        from tiered.core import ModelTags

        self.name = "bench_raw"
        self.tags = ModelTags(generates_text=True, asynchronous=True, needs_server=True)
        self.model = spec.get("model", "fake")
        url = urlsplit(spec["base_url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.path = url.path.rstrip("/") + "/chat/completions"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def predict(self, items: Sequence[Any]) -> Any:
        return asyncio.run(self.apredict(items))

    async def _post(self, body: bytes) -> dict[str, Any]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        self.idle.append((reader, writer))
        if status != 200:
            from tiered.errors import UpstreamError

            raise UpstreamError(f"HTTP {status}", status=status)
        return json.loads(payload)  # type: ignore[no-any-return]

    async def apredict(self, items: Sequence[Any]) -> Any:
        from tiered.core import AnswerBatch

        async def one(item: Any) -> tuple[str, float]:
            t0 = time.perf_counter()
            msgs = (
                item.input
                if isinstance(item.input, list)
                else [{"role": "user", "content": item.input}]
            )
            data = await self._post(json.dumps({"model": self.model, "messages": msgs}).encode())
            return data["choices"][0]["message"]["content"], 1000 * (time.perf_counter() - t0)

        got = await asyncio.gather(*(one(it) for it in items))
        return AnswerBatch.from_labels(
            [g[0] for g in got], latency_ms=np.array([g[1] for g in got])
        )


class ConstChat:
    """An in-memory stage (kind ``bench_const``): no network, for the in-process phase."""

    def __init__(self, spec: dict[str, Any], ctx: Any) -> None:
        from tiered.core import ModelTags

        self.name = "bench_const"
        self.tags = ModelTags(generates_text=True, asynchronous=True)

    def predict(self, items: Sequence[Any]) -> Any:
        return asyncio.run(self.apredict(items))

    async def apredict(self, items: Sequence[Any]) -> Any:
        from tiered.core import AnswerBatch

        return AnswerBatch.from_labels(["A fast and honest answer."] * len(items))


async def in_process_cpu(n: int) -> float:
    """CPU ms per chat request of the gateway's ASGI app alone (no sockets, no upstream)."""
    from tiered.core import register_model
    from tiered.serve import Gateway, build_app
    from tiered.serve.config import GatewayConfig

    register_model("bench_const")(ConstChat)
    cfg = GatewayConfig.model_validate(
        {
            "cascades": [
                {"name": "bench", "stages": [{"name": "c", "model": {"kind": "bench_const"}}]}
            ]
        }
    )
    app = build_app(Gateway.from_config(cfg))
    body = json.dumps(PAYLOAD).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def call() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        status = []

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app({**scope, "state": {}}, receive, send)
        assert status == [200], status

    for _ in range(min(n, 200)):
        await call()
    t0 = time.process_time()
    for _ in range(n):
        await call()
    return 1000 * (time.process_time() - t0) / n


def serve_gateway(config: str, port: int) -> None:
    """Child process: what ``tiered serve CONFIG --log-level warning`` does, plus the
    ``bench_raw`` kind."""
    from tiered.core import register_model
    from tiered.serve import Gateway, load_gateway_config, run_server

    register_model("bench_raw")(RawChat)
    gateway = Gateway.from_config(load_gateway_config(config))
    run_server(gateway, host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------- measuring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(upstream: str, client: str) -> str:
    if client == "openai":
        model = (
            f"{{kind: openai, base_url: '{upstream}', model: fake, mode: generate, "
            "api_key_env: TIERED_BENCH_KEY, max_retries: 0}"
        )
    else:
        model = f"{{kind: bench_raw, base_url: '{upstream}', model: fake}}"
    return (
        "server: {max_in_flight: 1024, deadline_s: 30}\n"
        "cascades:\n"
        "  - name: bench\n"
        "    stages:\n"
        f"      - {{name: upstream, model: {model}}}\n"
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}")
            try:
                if (await c.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy")


DISTINCT = False  # --distinct: a prompt of its own for every request
_SENT = iter(range(1 << 62))


def payload() -> dict[str, Any]:
    if not DISTINCT:
        return PAYLOAD
    text = f"Is the gateway fast enough? (request {next(_SENT)})"
    return {**PAYLOAD, "messages": [{"role": "user", "content": text}]}


async def timed(client: httpx.AsyncClient, url: str) -> tuple[float, bool]:
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=payload())
        ok = r.status_code == 200 and bool(r.json()["choices"][0]["message"]["content"])
    except httpx.HTTPError:
        ok = False
    return 1000 * (time.perf_counter() - t0), ok


async def sequential(
    client: httpx.AsyncClient, direct: str, gateway: str, n: int
) -> tuple[np.ndarray, np.ndarray, int]:
    d_ms, g_ms, errors = [], [], 0
    for _ in range(n):
        t, ok = await timed(client, direct)
        d_ms.append(t)
        errors += not ok
        t, ok = await timed(client, gateway)
        g_ms.append(t)
        errors += not ok
    return np.array(d_ms), np.array(g_ms), errors


async def concurrent(
    client: httpx.AsyncClient, url: str, n: int, workers: int
) -> tuple[float, np.ndarray, int]:
    queue = iter(range(n))
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for _ in queue:
            t, ok = await timed(client, url)
            lat.append(t)
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    wall = time.perf_counter() - t0
    return n / wall, np.array(lat), errors


def cpu_seconds(pid: int) -> np.ndarray:
    """User and system CPU seconds of a process (Linux /proc), to price each request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return np.array([int(fields[11]), int(fields[12])]) / os.sysconf("SC_CLK_TCK")


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q))


async def bench(args: argparse.Namespace) -> None:
    console = Console()
    PAYLOAD["model"] = "bench"  # the gateway's cascade; the fake upstream ignores it
    app_cpu = await in_process_cpu(args.inprocess)
    upstream = await FakeUpstream(answer="A fast and honest answer.", record=False).start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.yaml"
        cfg.write_text(gateway_config(upstream.base_url, args.client), encoding="utf-8")
        env = {**os.environ, "TIERED_BENCH_KEY": "sk-bench"}  # the fake ignores it
        cmd = [sys.executable, __file__, "--serve-gateway", str(cfg), "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(base, proc)
            direct = upstream.base_url + "/chat/completions"
            gw = base + "/v1/chat/completions"
            limits = httpx.Limits(max_connections=args.concurrency * 2)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                await sequential(client, direct, gw, args.warmup)
                cpu0 = cpu_seconds(proc.pid)
                d_ms, g_ms, seq_err = await sequential(client, direct, gw, args.sequential)
                cpu1 = cpu_seconds(proc.pid)
                calls0 = upstream.calls
                g_rps, g_lat, g_err = await concurrent(client, gw, args.requests, args.concurrency)
                cpu2 = cpu_seconds(proc.pid)
                upstream_calls = upstream.calls - calls0
                d_rps, d_lat, d_err = await concurrent(
                    client, direct, args.requests, args.concurrency
                )
        finally:
            proc.terminate()
            proc.wait(10)
            await upstream.stop()

    table = Table(title=f"gateway on loopback ({args.client} stage client), ms")
    for col in ("", "p50", "p90", "p99", "mean"):
        table.add_column(col, justify="right" if col else "left")
    for name, a in (("direct upstream", d_ms), ("through gateway", g_ms)):
        table.add_row(name, *(f"{pct(a, q):.3f}" for q in (50, 90, 99)), f"{a.mean():.3f}")
    table.add_row(
        "[bold]added by gateway[/]",
        *(f"[bold]{pct(g_ms, q) - pct(d_ms, q):.3f}[/]" for q in (50, 90, 99)),
        f"{g_ms.mean() - d_ms.mean():.3f}",
    )
    console.print(table)
    console.print(
        f"the gateway's ASGI app alone (in-process, in-memory stage): {app_cpu:.3f} ms CPU "
        f"per request over {args.inprocess} requests"
    )
    console.print(
        f"sequential: {args.sequential} requests each way, {seq_err} errors; "
        f"paired difference median {statistics.median(g_ms - d_ms):.3f} ms"
    )
    seq_cpu = 1000 * (cpu1 - cpu0) / args.sequential
    con_cpu = 1000 * (cpu2 - cpu1) / args.requests
    console.print(
        f"gateway process CPU per request (user + system): sequential "
        f"{seq_cpu[0]:.2f} + {seq_cpu[1]:.2f} ms, concurrent {con_cpu[0]:.2f} + {con_cpu[1]:.2f} ms"
    )
    how = "a prompt per request" if DISTINCT else "one prompt: identical requests in flight join"
    console.print(
        f"concurrent phase: {upstream_calls} upstream calls for {args.requests} requests ({how})"
    )
    t2 = Table(title=f"{args.requests} requests from {args.concurrency} concurrent clients")
    for col in ("", "req/s", "p50 ms", "p99 ms", "errors"):
        t2.add_column(col, justify="right" if col else "left")
    t2.add_row("through gateway", f"{g_rps:,.0f}", f"{pct(g_lat, 50):.2f}",
               f"{pct(g_lat, 99):.2f}", str(g_err))  # fmt: skip
    t2.add_row("direct upstream", f"{d_rps:,.0f}", f"{pct(d_lat, 50):.2f}",
               f"{pct(d_lat, 99):.2f}", str(d_err))  # fmt: skip
    console.print(t2)
    added = pct(g_ms, 50) - pct(d_ms, 50)
    console.print(
        f"target p50 added < 2 ms: {'met' if added < 2 else 'NOT met'} ({added:.3f} ms); "
        f"errors at {args.concurrency} clients: {g_err} (target 0). "
        f"Machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} (shared)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="concurrent phase (default 2000)")
    ap.add_argument("--concurrency", type=int, default=64, help="client tasks (default 64)")
    ap.add_argument("--sequential", type=int, default=1000, help="latency pairs (default 1000)")
    ap.add_argument("--warmup", type=int, default=100, help="untimed pairs (default 100)")
    ap.add_argument("--inprocess", type=int, default=2000, help="in-process requests (2000)")
    ap.add_argument("--client", choices=("openai", "raw"), default="openai")
    ap.add_argument("--distinct", action="store_true", help="a prompt of its own for every request")
    ap.add_argument("--serve-gateway", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway, args.port)
        return
    global DISTINCT
    DISTINCT = args.distinct
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
