"""The error–cost curve and its normalised area, the plain grid baseline, ``eval --curve``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tiered.calibrate import LogView, calibrate, evaluate_stages
from tiered.calibrate.curve import ErrorCostCurve, frontier_curve, mean_error, shared_range
from tiered.calibrate.grid import choose_grid, grid_frontier, grid_outcome
from tiered.cli import app
from tiered.core.spec import CascadeSpec
from tiered.errors import ConfigError

from .test_calibrate import FAST, make_log
from .test_calibrate_auto import write_log


def test_mean_error_is_the_area_over_the_range_divided_by_its_width() -> None:
    # error 0.4 at cost 1, 0.2 at 2, 0.1 at 4: areas 0.3 + 0.3 over a width of 3
    curve = ErrorCostCurve.of(cost=[4.0, 1.0, 2.0], quality=[0.9, 0.6, 0.8])
    assert curve.mean_error() == pytest.approx(0.2)
    assert curve.mean_error(1.0, 2.0) == pytest.approx(0.3)
    assert curve.mean_error(3.0, 3.0) == pytest.approx(0.15)  # a point: the curve's value
    # beyond its points the curve is held flat
    assert mean_error(np.array([1.0, 2.0]), np.array([0.4, 0.2]), 0.0, 3.0) == pytest.approx(
        (0.4 + 0.3 + 0.2) / 3
    )
    # two points at one cost (a vertical step) add no area
    step = mean_error(np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0, 0.0]), 0.0, 2.0)
    assert step == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="cost range"):
        curve.mean_error(2.0, 1.0)
    with pytest.raises(ConfigError, match="as many"):
        ErrorCostCurve.of([1.0], [0.5, 0.6])


def test_shared_range_is_what_every_curve_covers() -> None:
    a = ErrorCostCurve.of([1.0, 5.0], [0.5, 0.9])
    b = ErrorCostCurve.of([2.0, 4.0], [0.5, 0.9])
    assert shared_range([a, b]) == (2.0, 4.0)
    c = ErrorCostCurve.of([6.0, 7.0], [0.5, 0.9])
    assert shared_range([a, c]) == (6.0, 6.0)  # no overlap: a point


def test_grid_frontier_is_pareto_and_replays_exactly() -> None:
    view = LogView.of(make_log(240, 0))
    front = grid_frontier(view)
    cost = np.array([p.cost for p in front])
    quality = np.array([p.quality for p in front])
    assert np.all(np.diff(cost) > 0) and np.all(np.diff(quality) > 0)
    assert any(len(p.models) > 1 for p in front)
    # every model alone is scored too: the cheapest and the best are on the frontier
    assert front[0].models == (0,) and quality[-1] >= view.quality.mean(axis=0).max()
    for p in front:
        c, q = grid_outcome(view, p)
        assert c.mean() == pytest.approx(p.cost) and q.mean() == pytest.approx(p.quality)
    top = view.top()[1]
    pick = choose_grid(front, top)
    assert pick.quality >= top - 1e-12 and all(
        p.cost >= pick.cost for p in front if p.quality >= top
    )
    assert choose_grid(front, 2.0) is front[-1]  # unreachable: the best it has


def test_grid_without_signals_has_only_single_models() -> None:
    view = LogView.of(make_log(120, 0, signals=False))
    assert all(len(p.models) == 1 for p in grid_frontier(view))


def test_frontier_curve_replays_the_recorded_frontier(tmp_path: Path) -> None:
    log = make_log(240, 0)
    cal = calibrate(log, min_quality="top", settings=FAST)
    path = cal.save(tmp_path / "c.yaml")
    got = frontier_curve(CascadeSpec.load(path), LogView.of(log))
    front = [r for r in got.rows if r["kind"] == "frontier"]
    # on the rows it was fitted on, the replayed frontier is the calibrator's, point by point
    assert len(front) == len(cal.frontier)
    for r, p in zip(front, cal.frontier, strict=True):
        assert r["cost_per_item"] == pytest.approx(p.cost)
        assert r["quality"] == pytest.approx(p.quality)
    assert got.curve is not None
    assert got.area == pytest.approx(got.curve.mean_error())
    assert [r["cascade"] for r in got.rows if r["kind"] == "single"] == log.models
    # on other rows it is the held-out curve
    other = LogView.of(make_log(240, 9))
    held = frontier_curve(CascadeSpec.load(path), other)
    p = cal.frontier[len(cal.frontier) // 2]
    out = evaluate_stages(other, p.config.stage_refs(other.models))
    r = [x for x in held.rows if x["kind"] == "frontier"][len(cal.frontier) // 2]
    assert r["quality"] == pytest.approx(out.mean_quality)


def test_eval_curve_writes_csv_or_json_with_the_area(tmp_path: Path) -> None:
    log_path = write_log(make_log(240, 0), tmp_path / "log.jsonl")
    cascade = tmp_path / "c.yaml"
    got = CliRunner().invoke(
        app, ["calibrate", str(log_path), "-o", str(cascade), "--max-stages", "3"]
    )
    assert got.exit_code == 0, got.output
    csv_path, json_path = tmp_path / "curve.csv", tmp_path / "curve.json"
    got = CliRunner().invoke(
        app, ["eval", str(cascade), str(log_path), "--curve", str(csv_path)], env={"COLUMNS": "200"}
    )
    assert got.exit_code == 0, got.output
    assert "normalised area under the error–cost curve" in got.output
    rows = list(csv.DictReader(csv_path.read_text(encoding="utf-8").splitlines()))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"frontier", "single", "cascade"}
    assert all(float(r["error"]) == pytest.approx(1 - float(r["quality"])) for r in rows)
    got = CliRunner().invoke(app, ["eval", str(cascade), str(log_path), "--curve", str(json_path)])
    assert got.exit_code == 0, got.output
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert 0 < data["normalised_area"] < 1 and len(data["points"]) == len(rows)


def test_eval_curve_of_a_hand_written_cascade_has_no_frontier(tmp_path: Path) -> None:
    log_path = write_log(make_log(60, 0), tmp_path / "log.jsonl")
    spec = tmp_path / "hand.yaml"
    spec.write_text(
        "stages:\n  - {name: m0, model: {kind: replay, model: m0}, "
        "rule: {kind: threshold, signal: logprob, threshold: -0.2}}\n"
        "  - {name: m3, model: {kind: replay, model: m3}}\n",
        encoding="utf-8",
    )
    out = tmp_path / "curve.csv"
    got = CliRunner().invoke(
        app, ["eval", str(spec), str(log_path), "--curve", str(out)], env={"COLUMNS": "200"}
    )
    assert got.exit_code == 0, got.output
    assert "keeps no frontier" in got.output
    rows = csv.DictReader(out.read_text(encoding="utf-8").splitlines())
    assert {r["kind"] for r in rows} == {"single", "cascade"}
