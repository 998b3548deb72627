"""A newcomer's first commands: --version, --help, the local model's quiet load, the
example's instructions, the summary of a run nobody audited yet, the demo's settings."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tiered.cli import app

from ._cli import tiered

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, n: int) -> Path:
    words = {"pos": "good great fine", "neg": "bad awful poor"}
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            row = {"id": f"r{i}", "text": f"a {words[label]} film {i}", "label": label}
            f.write(json.dumps(row) + "\n")
    return path


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = tiered(capsys, "--version")
    assert code == 0
    assert out.strip() == f"tiered {version('tiered')}"


def commands() -> list[list[str]]:
    """Every command path of the CLI (``[]`` is ``tiered`` itself)."""
    found: list[list[str]] = [[]]

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer bundles its own click)
            for name, sub in cmd.commands.items():
                found.append([*path, name])
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "tiered")
def test_help_shows_no_value_type_after_a_flag(
    path: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = tiered(capsys, *path, "--help")
    assert code == 0
    assert "--help" in out
    assert "<bool>" not in out  # a flag takes no value
    # options that do take a value still say what kind
    if path == ["run"]:
        assert re.search(r"--batch-size\s+<int", out)


def test_the_report_command_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = tiered(capsys, "--help")
    assert re.search(r"│ report\s", out)


def need_llama_cpp() -> None:
    """Fail (never skip) without llama-cpp-python; found without importing it here, as
    importing it leaves two files open until the process ends."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is missing: pip install -e '.[llm]'", pytrace=False)


def test_loading_the_local_model_prints_nothing(tmp_path: Path) -> None:
    """llama.cpp's own log lines (e.g. "llama_kv_cache_iswa: using full-size SWA cache")
    stay off the terminal; they go to the ``tiered.llamacpp`` logger."""
    need_llama_cpp()
    script = (
        "import logging\n"
        "from tiered.models.llm.llamacpp import LlamaCpp\n"
        "seen = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): seen.append(record.getMessage())\n"
        "logging.getLogger('tiered.llamacpp').addHandler(Keep())\n"
        "logging.getLogger('tiered.llamacpp').setLevel(logging.DEBUG)\n"
        "m = LlamaCpp(labels=['fresh', 'rotten'], words={'fresh': 'positive', "
        "'rotten': 'negative'}, template='Review: {input}\\nSentiment:', n_ctx=256, "
        "n_threads=1)\n"
        "m.load()\n"
        "print(len(seen))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert int(done.stdout.strip()) > 0  # llama.cpp did speak: to the logger


def test_a_failed_load_quotes_llama_cpp(tmp_path: Path) -> None:
    """What llama.cpp said goes into the error instead (in a process of its own: loading
    llama.cpp swaps the standard streams once, which pytest should not see)."""
    need_llama_cpp()
    bad = tmp_path / "not-a-model.gguf"
    bad.write_text("hello", encoding="utf-8")
    script = (
        "from tiered.models.llm.llamacpp import LlamaCpp\n"
        "from tiered.errors import ModelError\n"
        "try:\n"
        f"    LlamaCpp(labels=['a', 'b'], model_path={str(bad)!r}).load()\n"
        "except ModelError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"cannot load GGUF model .*llama\.cpp: .*GGUF", done.stdout), done.stdout
    assert done.stderr == ""


def test_the_local_model_example_says_a_command_that_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = ROOT / "examples" / "llamacpp-sentiment.yaml"
    said = [
        line.strip("# \n")
        for line in example.read_text(encoding="utf-8").splitlines()
        if line.lstrip("# ").startswith("tiered run ")
    ]
    assert len(said) == 1, said
    args = shlex.split(said[0])[2:]
    assert args[0] == "examples/llamacpp-sentiment.yaml"
    data = write_rows(tmp_path / "reviews.jsonl", 5)
    args = [str(ROOT / args[0]), *(str(data) if a == "reviews.jsonl" else a for a in args[1:])]
    args = [str(tmp_path / a) if a.endswith(".jsonl") and "/" not in a else a for a in args]
    # --limit 0: the arguments are checked and the run set up, the model never called
    code, out, err = tiered(capsys, "run", *args, "--limit", "0", "--no-progress")
    assert code == 0, err
    assert "0 answered" in out


def test_a_run_answered_by_the_expert_alone_claims_no_measured_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_rows(tmp_path / "in.jsonl", 40)  # fewer than the warm-up: all to the expert
    code, out, err = tiered(
        capsys, "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--expert-field", "label",
        "--expert-cost", "0.001", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    said = " ".join(out.replace("│", " ").split())  # the table wraps at 80 columns
    assert "0 of them audits" in said
    assert "[1.000, 1.000]" not in said
    assert "1.000 (every answer is the expert's own: nothing to audit)" in said


def test_the_demo_config_keeps_to_one_thread_per_model() -> None:
    """On a busy 2-core machine llama.cpp's spinning threads and torch's pool fight over
    the cores; the demo runs each model on one thread."""
    text = resources.files("tiered.demo").joinpath("rotten_tomatoes.yaml").read_text("utf-8")
    config = yaml.safe_load(text)
    assert config["expert"]["model"]["kind"] == "llamacpp"
    assert config["expert"]["model"]["n_threads"] == 1
    minilm = [s for s in config["cheap"] if s["kind"] == "embedding"]
    assert minilm and all(s.get("num_threads", 1) == 1 for s in minilm)


def test_make_demo_says_what_it_is_doing() -> None:
    """`make demo` on a fresh machine installs for minutes: every step says so first."""
    done = subprocess.run(
        ["make", "-n", "-B", "demo"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    steps = [line for line in lines if line.startswith('echo "==>')]
    assert len(steps) >= 5
    pip = [i for i, line in enumerate(lines) if "pip install -q -e" in line]
    assert pip and "llama-cpp-python" in " ".join(lines[pip[0] - 3 : pip[0]])
    assert "still working" in lines[pip[0]]  # a line every 30 s while pip builds
