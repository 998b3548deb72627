"""The README's fenced code blocks, for the tests that run them as a reader would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
TIMEOUT_S = 300  # a busy 2-core machine; a block that hangs (a server) fails at this
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language as written, its text and the line of its opening fence."""

    lang: str
    text: str
    line: int

    @property
    def runner(self) -> str | None:
        """``bash`` or ``python`` for a block the README test runs, else None (yaml, output)."""
        return RUNNABLE.get(self.lang.lower())

    def where(self) -> str:
        return f"README.md:{self.line} (```{self.lang})"

    def with_text(self, text: str) -> Block:
        """The same block with its text edited (a port number, say)."""
        return Block(self.lang, text, self.line)


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path``, in order (nested fences are not a thing in it)."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        out.append(Block(lang, "\n".join(body) + "\n", start + 1))
        i += 1
    return out


def the_block(key: str, path: Path = README) -> Block:
    """The one block whose text contains ``key`` (an error naming the count otherwise)."""
    found = [b for b in blocks(path) if key in b.text]
    if len(found) != 1:
        where = ", ".join(b.where() for b in found) or "none"
        raise LookupError(f"{len(found)} README blocks contain {key!r} (want 1): {where}")
    return found[0]


def reader_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A reader's environment: the project's ``tiered`` and ``python`` first on the PATH."""
    env = {k: v for k, v in os.environ.items() if k != "TIERED_DEBUG"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | (extra or {})


def run_block(
    block: Block, folder: Path, timeout_s: float = TIMEOUT_S, env: dict[str, str] | None = None
) -> str:
    """Run ``block`` in ``folder`` as a reader would; its stdout (a failure says how to fix)."""
    script = folder / f"block_{block.line}.{'py' if block.runner == 'python' else 'sh'}"
    script.write_text(block.text, encoding="utf-8")
    argv = [sys.executable, str(script)]
    if block.runner == "bash":
        argv = ["bash", "-e", "-o", "pipefail", str(script)]
    env = reader_env(env)
    how = (
        "Fix the block (or the code), give it the data it needs (the `sandbox` fixture of "
        "tests/test_readme.py), or list it there in SKIP with the reason it cannot run in "
        "tests (a hosted key, minutes of runtime) or in ELSEWHERE with the test that runs it."
    )
    try:
        done = subprocess.run(
            argv, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where()} ran over {timeout_s:.0f} s:\n{block.text}\n{how}")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        pytest.fail(
            f"{block.where()} failed (exit {done.returncode}):\n{block.text}--- output ---\n"
            f"{tail}\n{how}"
        )
    return done.stdout
