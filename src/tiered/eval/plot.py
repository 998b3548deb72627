"""The cost–quality plot: single models, the oracle bound, the chosen cascade, the target,
optionally a calibrated frontier.

Every marked point is in the legend and stays visible: the chosen cascade is an open
diamond drawn over whatever sits at the same place (often the best single model, when
the honest choice is that model alone), and each is also labelled beside the point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiered.eval.metrics import EvalReport, format_usd

_MODEL = "#5b7fa6"
_TOP = "#1f3b5c"
_CASCADE = "#d1495b"
_ORACLE = "#e0a100"
_FRONTIER = "#66a182"
_TARGET = "#7a5800"


def cost_quality_figure(
    report: EvalReport,
    *,
    frontier: Sequence[tuple[float, float]] | None = None,
    target: float | None = None,
    budget: float | None = None,
    title: str | None = None,
) -> Any:
    """The cost–quality figure (a matplotlib ``Figure``; the caller saves and closes it).

    ``target`` is the quality the cascade was chosen to reach (a dashed line), ``budget``
    the mean cost per query it had to stay within (a dashed vertical line).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from tiered.eval.ticks import UsdFormatter, log_usd_axis

    pts = report.models
    costs = [p.cost_per_item for p in pts] + [report.cost_per_item, report.oracle_cost_per_item]
    if frontier:
        costs += [c for c, _ in frontier]
    if budget is not None:
        costs.append(budget)
    positive = [c for c in costs if c > 0]
    log_x = bool(positive) and max(positive) / min(positive) >= 10 and len(positive) == len(costs)

    fig, ax = plt.subplots(figsize=(8.5, 5.6), dpi=150)
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if log_x:
        ax.set_xscale("log")
        log_usd_axis(ax.xaxis, min(positive), max(positive))
    else:
        ax.xaxis.set_major_formatter(UsdFormatter())

    if frontier:
        fx, fy = zip(*sorted(frontier), strict=True)
        ax.plot(
            fx,
            fy,
            "o-",
            color=_FRONTIER,
            ms=3,
            lw=1.8,
            alpha=0.9,
            zorder=2,
            label="calibrated frontier (cascades on the fitted log)",
        )

    others = [p for p in pts if p.name != report.top_model]
    top = next(p for p in pts if p.name == report.top_model)
    ax.scatter(
        [p.cost_per_item for p in others],
        [p.quality for p in others],
        s=45,
        color=_MODEL,
        edgecolor="white",
        label="single models",
        zorder=3,
    )
    ax.scatter(
        [top.cost_per_item],
        [top.quality],
        s=80,
        color=_TOP,
        edgecolor="white",
        label=f"best single model: {top.name} ({100 * top.quality:.1f}%, "
        f"{format_usd(top.cost_per_item)})",
        zorder=4,
    )
    for p in pts:
        ax.annotate(
            p.name,
            (p.cost_per_item, p.quality),
            xytext=(7, -10 if p is top else -3),
            textcoords="offset points",
            fontsize=7.5,
            color="#333333",
        )
    ax.scatter(
        [report.oracle_cost_per_item],
        [report.oracle_quality],
        marker="*",
        s=220,
        color=_ORACLE,
        edgecolor="#7a5800",
        label="oracle bound (cheapest correct model per query)",
        zorder=4,
    )
    rel = (
        f", {report.relative_cost:.2f}× the best model's cost"
        if report.relative_cost is not None
        else ""
    )
    # open, over everything: the best single model stays visible inside it
    ax.scatter(
        [report.cost_per_item],
        [report.quality],
        marker="D",
        s=190,
        facecolor="none",
        edgecolor=_CASCADE,
        linewidth=2.2,
        label=f"chosen cascade ({100 * report.quality:.1f}%{rel})",
        zorder=6,
    )
    ax.annotate(
        "chosen",
        (report.cost_per_item, report.quality),
        xytext=(-10, 12),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        fontweight="bold",
        color=_CASCADE,
    )
    if target is not None:
        ax.axhline(
            target,
            color=_TARGET,
            lw=1.2,
            ls="--",
            zorder=1,
            label=f"target: quality ≥ {100 * target:.1f}%",
        )
    if budget is not None:
        ax.axvline(
            budget,
            color=_TARGET,
            lw=1.2,
            ls=":",
            zorder=1,
            label=f"budget: {format_usd(budget)} per query",
        )

    ax.set_xlabel("mean cost per query (USD" + (", log scale)" if log_x else ")"))
    ax.set_ylabel("quality (share answered correctly)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    name = Path(report.log).name if report.log else "replay log"
    heading = title or f"Cost vs quality on {name} ({report.n_items:,} queries)"
    if report.synthetic:
        heading += "\nSYNTHETIC DATA (generated, not real model outputs)"
    ax.set_title(heading, fontsize=11)
    # below the axes: inside, it hides points on logs with many models
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    ax.margins(x=0.12, y=0.08)
    fig.tight_layout()
    return fig


def plot_cost_quality(
    report: EvalReport,
    path: str | Path,
    *,
    frontier: Sequence[tuple[float, float]] | None = None,
    target: float | None = None,
    budget: float | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of quality against mean cost per query (:func:`cost_quality_figure`);
    returns its path. The cost axis is logarithmic when the costs span a decade or more."""
    import matplotlib.pyplot as plt

    fig = cost_quality_figure(report, frontier=frontier, target=target, budget=budget, title=title)
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


__all__ = ["cost_quality_figure", "plot_cost_quality"]
