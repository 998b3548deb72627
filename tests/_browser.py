"""A real headless browser for tests: Debian's ``chromium``, driven over the DevTools
protocol through a pipe (``--remote-debugging-pipe``: no port, no extra package).

:func:`open_page` loads a page and reports what a person would notice: console errors,
uncaught exceptions, failed loads, and every image with the size it was decoded at.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HOW_TO = (
    "the HTML report's test needs Debian's chromium: `apt-get install -y chromium` as root "
    "(`make test` does it when run as root)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


def find_chromium() -> str:
    """The chromium binary; FAILS the test (never skips) with how to get it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(HOW_TO, pytrace=False)


@dataclass
class PageReport:
    """What loading a page showed."""

    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    text: str = ""
    screenshot: bytes = b""


class _Pipe:
    """DevTools messages over the pipe: NUL-terminated JSON, numbered commands."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.out = os.fdopen(to_browser, "wb", buffering=0)
        self.inp = os.fdopen(from_browser, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer in time")
            chunk = self.inp.read(65536)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def call(
        self, method: str, session: str | None = None, timeout: float = 60, **params: Any
    ) -> Any:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            got = self._read(deadline)
            if got.get("id") == self.next_id:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get("result", {})
            self.events.append(got)

    def close(self) -> None:
        self.out.close()
        self.inp.close()

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            got = self._read(deadline)
            if got.get("method") == method:
                return got
            self.events.append(got)


_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
  alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
  naturalHeight: i.naturalHeight, width: i.width, height: i.height})))"""


def open_page(url: str, *, width: int = 1000, height: int = 1400) -> PageReport:
    """Load ``url`` in headless chromium; what it showed, with a full-page screenshot."""
    binary = find_chromium()
    profile = tempfile.mkdtemp(prefix="tiered-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def child_fds() -> None:  # the browser reads commands on fd 3, writes on fd 4
        read, write = os.dup(to_r), os.dup(from_w)  # above 4: dup2 cannot clobber them
        os.dup2(read, 3)
        os.dup2(write, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=child_fds,
        close_fds=False,
    )  # fmt: skip
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(to_w, from_r)
    report = PageReport()
    try:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session)
        pipe.call("Page.navigate", session, url=url)
        pipe.wait_for("Page.loadEventFired")
        value = pipe.call("Runtime.evaluate", session, expression=_IMAGES_JS)["result"]["value"]
        report.images = json.loads(value)
        report.title = pipe.call("Runtime.evaluate", session, expression="document.title")[
            "result"
        ]["value"]
        report.text = pipe.call("Runtime.evaluate", session, expression="document.body.innerText")[
            "result"
        ]["value"]
        shot = pipe.call(
            "Page.captureScreenshot", session, format="png", captureBeyondViewport=True
        )
        report.screenshot = base64.b64decode(shot["data"])
        for ev in pipe.events:
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                report.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                report.errors.append(f"console: {p.get('args')}")
            elif ev.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                report.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        with contextlib.suppress(RuntimeError, TimeoutError):
            pipe.call("Browser.close", timeout=10)
    finally:
        pipe.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return report


def file_url(path: Path) -> str:
    return path.resolve().as_uri()
