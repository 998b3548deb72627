"""The README's commands are right by construction: every ```bash and ```python block runs.

Each block runs as a reader would paste it, in one scratch folder holding small data under
the names the README uses (``INPUT.jsonl``, ``LOG.jsonl``) and the repository's
``examples/``, with the project's ``tiered`` and ``python`` first on the PATH. A block that
cannot run here is listed, by a piece of its text, in ``SKIP`` (with the reason) or in
``ELSEWHERE`` (with the test that runs it). A new block runs by default: when it fails, the
message says how to give it data or mark it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests._readme import README, Block, blocks, run_block, the_block
from tiered.replay.synthetic import write_synthetic_log

ROOT = README.parent

SKIP = {
    "make demo": "minutes: creates .venv, builds llama.cpp, runs the demo (and `make test` is "
    "this test run)",
    "tiered serve examples/gateway-local.yaml": "a gateway that runs until stopped, with Gemma "
    "behind it: tests/test_examples.py serves this file's in-process cascade",
    'base_url="http://127.0.0.1:8080/v1"': "needs the gateway above running: "
    "tests/test_serve_e2e.py drives a gateway with the official client the same way",
    "redis://localhost:6379/reviews": "needs a Redis server: tests/test_redis_streams.py runs "
    "workers on a real redis-server",
    "examples/replica-gateway.yaml": "gateway replicas that run until stopped, on a shared "
    "Redis: tests/test_serve_replicas.py",
    "tiered batch run.yaml data/": "needs a run config, a folder of data and a Ray cluster "
    "(--ray auto): tests/test_ray_batch.py runs tiered batch",
    "export OPENAI_API_KEY=sk-": "needs a hosted OpenAI key; the same command with --base-url "
    "runs against a real local server in tests/test_run_quick_expert.py",
}
_QUICK_EXPERT = "tests/test_run_quick_expert.py::"
_SERVER_TEST = f"{_QUICK_EXPERT}test_readme_commands_against_a_local_llama_server"
ELSEWHERE = {
    "python -m llama_cpp.server": _SERVER_TEST,
    "--base-url http://127.0.0.1:8080/v1": _SERVER_TEST,
    "--expert local --labels": f"{_QUICK_EXPERT}test_readme_command_with_gemma_in_process",
}
WORDS = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "grim"]}


def _excluded(block: Block) -> bool:
    return any(key in block.text for key in (*SKIP, *ELSEWHERE))


RUN = [b for b in blocks() if b.runner is not None and not _excluded(b)]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the blocks run in: the README's file names, with small data behind them."""
    root = tmp_path_factory.mktemp("readme")
    rng = random.Random(0)
    with (root / "INPUT.jsonl").open("w", encoding="utf-8") as f:
        for i in range(400):
            lab = rng.choice(sorted(WORDS))
            text = " ".join(rng.choice(["the", "a", "film", "plot", *WORDS[lab]]) for _ in range(8))
            f.write(json.dumps({"id": f"r{i}", "text": text, "label": lab}) + "\n")
    write_synthetic_log(root / "LOG.jsonl", 300, seed=0)
    write_synthetic_log(root / "NEW.jsonl", 200, seed=1)  # new data for the calibrated cascade
    (root / "examples").symlink_to(ROOT / "examples")
    return root


@pytest.mark.parametrize("block", RUN, ids=[f"line{b.line}-{b.lang}" for b in RUN])
def test_readme_block_runs(block: Block, sandbox: Path) -> None:
    run_block(block, sandbox)


def test_every_exclusion_names_one_block_and_says_why() -> None:
    for key, why in {**SKIP, **ELSEWHERE}.items():
        block = the_block(key)  # exactly one: a stale or ambiguous key fails here
        assert block.runner is not None, f"{key!r}: {block.where()} is not run anyway"
        assert len(why) > 20, f"{key!r}: say why it cannot run here"
    for key, test in ELSEWHERE.items():
        path, _, name = test.partition("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text("utf-8"), re.M), (key, test)


def test_the_readme_runs_the_commands_it_explains() -> None:
    # the sections a new user starts from are run here, not excluded
    texts = [b.text for b in RUN]
    for needle in ("tiered calibrate LOG.jsonl", "tiered run INPUT.jsonl", "from tiered import"):
        assert any(needle in t for t in texts), needle


def test_the_readme_error_for_a_misspelt_field_is_the_real_one(sandbox: Path) -> None:
    shown = the_block("field 'lable'")
    command = Block(
        "bash",
        "tiered run INPUT.jsonl -o typo.jsonl --expert-field lable --expert-cost 0.002 2>err.txt"
        " || echo exit $?\n",
        shown.line,
    )
    assert run_block(command, sandbox).strip() == "exit 2"
    assert (sandbox / "err.txt").read_text(encoding="utf-8").strip() == shown.text.strip()
    assert not (sandbox / "typo.jsonl").exists()  # stopped before it started


def test_the_online_command_keeps_the_input_ids(sandbox: Path) -> None:
    run_block(the_block("tiered run INPUT.jsonl"), sandbox)
    rows = [json.loads(x) for x in (sandbox / "INPUT.jsonl").read_text().splitlines()]
    out = [json.loads(x) for x in (sandbox / "labels.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]  # not line numbers
    assert (sandbox / "report.html").stat().st_size > 0
