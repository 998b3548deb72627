"""`tiered eval` and `tiered inspect` end to end, on a synthetic log and a hand-written cascade."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiered.cli import app
from tiered.core.spec import BuildContext, load_cascade
from tiered.eval import evaluate_cascade
from tiered.replay.load import load_replay
from tiered.replay.synthetic import make_synthetic_log, write_jsonl

CASCADE_YAML = """\
name: synthetic-3
stages:
  - name: syn-xs
    model: {kind: replay, model: syn-xs}
    rule: {kind: threshold, signal: logprob, threshold: -0.1}
  - name: syn-m
    model: {kind: replay, model: syn-m}
    rule: {kind: threshold, signal: logprob, threshold: -0.2}
  - name: syn-xl
    model: {kind: replay, model: syn-xl}
"""

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    log = write_jsonl(make_synthetic_log(400, seed=3, missing_rate=0.02), tmp_path / "syn.jsonl")
    cascade = tmp_path / "cascade.yaml"
    cascade.write_text(CASCADE_YAML, encoding="utf-8")
    return cascade, log


def test_eval_writes_json_and_plot_matching_the_library(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    cascade, log = files
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    res = runner.invoke(
        app, ["eval", str(cascade), str(log), "--json", str(out), "--plot", str(png)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    replay_log = load_replay(log)
    built = load_cascade(cascade, BuildContext(resources={"replay_log": replay_log}))
    _, report = evaluate_cascade(built, replay_log)
    assert data["quality"] == pytest.approx(report.quality)
    assert data["cost_per_item"] == pytest.approx(report.cost_per_item)
    assert data["relative_cost"] == pytest.approx(report.relative_cost)
    assert data["top_model"] == "syn-xl" and data["n_items"] == 400
    assert set(data["stage_share"]) == {"syn-xs", "syn-m", "syn-xl"}
    assert data["synthetic"] is True
    assert data["missing_outputs"] == report.missing_outputs > 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "SYNTHETIC DATA" in res.output
    assert f"{report.missing_outputs} queries lacked a recorded output" in res.output
    assert "oracle bound" in res.output and "syn-xl" in res.output


def test_eval_uses_the_given_log_over_the_cascade_files_log(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    cascade, log = files
    other = write_jsonl(make_synthetic_log(50, seed=9), tmp_path / "fitted_on.jsonl")
    cascade.write_text(
        CASCADE_YAML.replace("model: syn-xs}", f"model: syn-xs, log: {other.name}}}")
    )
    out = tmp_path / "o.json"
    res = runner.invoke(app, ["eval", str(cascade), str(log), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["n_items"] == 400


def test_eval_skip_bad_reports_and_writes_rejects(files: tuple[Path, Path], tmp_path: Path) -> None:
    cascade, log = files
    lines = log.read_text().splitlines()
    lines[10] = lines[10].replace('"cost": ', '"cost": "x", "was": ', 1)
    log.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rej.jsonl"
    res = runner.invoke(
        app, ["eval", str(cascade), str(log), "--skip-bad", "--rejects", str(rejects)]
    )
    assert res.exit_code == 0, res.output
    assert "skipped 1 bad line" in res.output and str(rejects) in res.output
    (reject,) = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert reject["line"] == 11 and reject["raw"] == lines[10]


def test_inspect_lists_models_cheapest_first_with_signals(files: tuple[Path, Path]) -> None:
    _, log = files
    res = runner.invoke(app, ["inspect", str(log)])
    assert res.exit_code == 0, res.output
    out = res.output
    positions = [out.index(m) for m in ("syn-xs", "syn-s ", "syn-m", "syn-l ", "syn-xl")]
    assert positions == sorted(positions)
    assert "logprob" in out and "400 queries, 5 models" in out
    assert "queries lack at least one model's output" in out


def test_inspect_refuses_an_unknown_kind_of_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(tmp_path / "x.csv")])
    assert res.exit_code != 0
    assert "cannot inspect a '.csv' file" in str(res.exception)


def test_a_bad_log_line_is_a_one_line_error_naming_file_and_line(files: tuple[Path, Path]) -> None:
    cascade, log = files
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"correct": ', '"correct": "maybe", "was": ', 1)
    log.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tiered.cli import main; main()",
            "eval",
            str(cascade),
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err
    assert err.startswith(f"error: {log}:3, field 'outputs.syn-xs.correct': must be true or false")
    assert "Traceback" not in proc.stderr
