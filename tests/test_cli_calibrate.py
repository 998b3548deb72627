"""`tiered calibrate` end to end on a small synthetic log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiered.cli import app
from tiered.core.spec import BuildContext, CascadeSpec
from tiered.errors import ConfigError
from tiered.eval import evaluate_cascade
from tiered.replay.load import load_replay
from tiered.replay.synthetic import make_synthetic_log, write_jsonl

runner = CliRunner()


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return write_jsonl(make_synthetic_log(240, seed=5), tmp_path / "syn.jsonl")


def test_calibrate_writes_a_cascade_that_meets_the_target(log_file: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "cascade.yaml", tmp_path / "frontier.png"
    res = runner.invoke(
        app,
        ["calibrate", str(log_file), "--min-quality", "top-0.01", "-o", str(out),
         "--plot", str(png), "--folds", "3", "--max-stages", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    spec = CascadeSpec.load(out)
    log = load_replay(log_file)
    _, report = evaluate_cascade(spec.build(BuildContext(resources={"replay_log": log})), log)
    md = spec.metadata
    assert md["min_quality"] == "top-0.01"
    assert report.quality >= report.top_quality - 0.01 - 1e-12
    assert report.quality == pytest.approx(md["expected"]["quality"], abs=1e-12)
    assert report.cost_per_item == pytest.approx(md["expected"]["cost_per_item"], rel=1e-12)
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the table: frontier highlights, the chosen point, its stages, the best single model
    assert "chosen" in res.output and "best single" in res.output and "oracle" in res.output
    assert "Chosen cascade" in res.output and "always (last stage)" in res.output
    for stage in spec.stages:
        assert stage.name in res.output
    assert "3-fold cross-validation" in res.output
    assert "cascade written to" in res.output and out.exists()


def test_calibrate_with_a_budget(log_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.yaml"
    budget = 2e-4
    res = runner.invoke(
        app, ["calibrate", str(log_file), "--budget", str(budget), "-o", str(out), "--folds", "0"]
    )
    assert res.exit_code == 0, res.output
    md = CascadeSpec.load(out).metadata
    assert md["budget_per_item"] == budget and md["cv"] is None
    assert md["expected"]["cost_per_item"] <= budget


def test_a_bad_target_fails_before_reading_the_log(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["calibrate", str(tmp_path / "missing.jsonl"), "--min-quality", "best", "-o", "x.yaml"],
    )
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError)
    assert "'min_quality' parameter must be" in str(res.exception)


def test_bad_search_options_are_config_errors(log_file: Path, tmp_path: Path) -> None:
    args = ["calibrate", str(log_file), "-o", str(tmp_path / "x.yaml")]
    res = runner.invoke(app, [*args, "--order", "random"])
    assert isinstance(res.exception, ConfigError) and "'order' parameter" in str(res.exception)
    res = runner.invoke(app, [*args, "--max-stages", "0"])
    assert isinstance(res.exception, ConfigError)
    assert "'max_stages' parameter" in str(res.exception)


def test_two_stage_limit_is_respected(log_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "two.yaml"
    args = ["calibrate", str(log_file), "-o", str(out), "--folds", "0", "--max-stages", "2"]
    res = runner.invoke(app, [*args, "--min-quality", "top-0.02"])
    assert res.exit_code == 0, res.output
    assert len(CascadeSpec.load(out).stages) <= 2


def test_skip_bad_calibrates_the_good_lines(log_file: Path, tmp_path: Path) -> None:
    lines = log_file.read_text().splitlines()
    lines[4] = lines[4].replace('"cost": ', '"cost": "free", "was": ', 1)
    log_file.write_text("\n".join(lines) + "\n")
    out, rejects = tmp_path / "c.yaml", tmp_path / "rej.jsonl"
    args = ["calibrate", str(log_file), "-o", str(out), "--folds", "0"]
    res = runner.invoke(app, [*args, "--skip-bad", "--rejects", str(rejects)])
    assert res.exit_code == 0, res.output
    assert "skipped 1 bad line" in res.output
    assert CascadeSpec.load(out).metadata["rows"] == 239


def test_errors_are_one_line_for_users(log_file: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from tiered.cli import main; main()", "calibrate",
         str(log_file), "--min-quality", "0.999", "-o", str(tmp_path / "x.yaml"), "--folds", "0",
         "--max-stages", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "field 'min_quality'" in err and "no cascade reaches quality 0.9990" in err
