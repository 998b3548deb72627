"""The plots people look at: money ticks that say the right amount, and a cost–quality
frontier whose chosen point, best single model and target are all visible and named."""

from __future__ import annotations

import itertools
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tiered.eval.metrics import EvalReport, ModelPoint
from tiered.eval.plot import cost_quality_figure
from tiered.eval.ticks import UsdFormatter, usd_tick


@pytest.mark.parametrize(
    ("x", "step", "text"),
    [
        (0.025, 0.005, "$0.025"),
        (0.03, 0.01, "$0.03"),
        (1.5, 0.5, "$1.50"),
        (2.0, 1.0, "$2"),
        (1234.5, 500.0, "$1,234"),
        (2e-5, 2e-5, "$0.00002"),
        (0.000539, 0.0001, "$0.000539"),
        (0.0, 0.005, "$0"),
    ],
)
def test_a_money_tick_says_the_exact_amount(x: float, step: float, text: str) -> None:
    assert usd_tick(x, step) == text


def test_money_ticks_on_an_axis_are_exact_and_distinct() -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 0.03])
    ax.yaxis.set_major_formatter(UsdFormatter())
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert "$0.025" in labels  # a fixed two-decimal format said "$0.03" (twice)
    assert len(labels) == len(set(labels))


def report(chosen_at_top: bool) -> EvalReport:
    """Five models spanning a decade and a half of cost; the chosen cascade sits on the
    best single model (the honest verdict: use it alone) or below it."""
    models = [
        ModelPoint("tiny", 0.41, 1.8e-5, None, 0),
        ModelPoint("small", 0.58, 1.9e-5, None, 0),
        ModelPoint("mid", 0.62, 3.7e-5, None, 0),
        ModelPoint("large", 0.79, 1.6e-4, None, 0),
        ModelPoint("huge", 0.814, 5.46e-4, None, 0),
    ]
    return EvalReport(
        n_items=285,
        quality=0.814 if chosen_at_top else 0.80,
        cost_per_item=5.39e-4 if chosen_at_top else 2.0e-4,
        latency_ms=None,
        stage_share={},
        top_model="huge",
        top_quality=0.814,
        top_cost_per_item=5.46e-4,
        relative_cost=0.987 if chosen_at_top else 0.37,
        oracle_quality=0.944,
        oracle_cost_per_item=6.2e-5,
        oracle_relative_cost=0.11,
        missing_outputs=0,
        missing_by_stage={},
        models=models,
        log="chains.jsonl",
    )


def _overlap(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("chosen_at_top", [True, False])
def test_the_frontier_names_and_shows_every_marked_point(chosen_at_top: bool) -> None:
    frontier = [(2e-5, 0.59), (1e-4, 0.72), (3.7e-4, 0.823)]
    fig = cost_quality_figure(report(chosen_at_top), frontier=frontier, target=0.814)
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("chosen cascade") for t in legend)
    assert any(t.startswith("best single model: huge") for t in legend)
    assert "target: quality ≥ 81.4%" in legend
    assert any(t.startswith("calibrated frontier") for t in legend)
    # the chosen point is open and on top: the best model under it stays visible
    chosen = next(c for c in ax.collections if c.get_label().startswith("chosen"))
    best = next(c for c in ax.collections if c.get_label().startswith("best single"))
    assert chosen.get_zorder() > best.get_zorder()
    assert chosen.get_facecolor().size == 0 or chosen.get_facecolor()[0][3] == 0
    # readable cost ticks: dollars, no exponents, no two labels on top of each other
    renderer = fig.canvas.get_renderer()
    ticks = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ticks if lo <= t.get_position()[0] <= hi]
    assert len(ticks) >= 3
    assert all(t.get_text().startswith("$") and "10^" not in t.get_text() for t in ticks)
    boxes = [t.get_window_extent(renderer) for t in ticks]
    assert not any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels())
    plt.close(fig)


def test_a_budget_is_drawn_and_named() -> None:
    fig = cost_quality_figure(report(False), budget=2.5e-4)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert "budget: $0.00025 per query" in legend
