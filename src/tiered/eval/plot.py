"""The cost–quality plot: single models, the oracle bound, the cascade, optionally a frontier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tiered.eval.metrics import EvalReport, format_usd

_MODEL = "#5b7fa6"
_TOP = "#1f3b5c"
_CASCADE = "#d1495b"
_ORACLE = "#e0a100"
_FRONTIER = "#66a182"


def _dollars(x: float, _pos: int | None = None) -> str:
    """Tick label: $0.0001 rather than 10^-4 (readable without a science degree)."""
    return format_usd(x)


def plot_cost_quality(
    report: EvalReport,
    path: str | Path,
    *,
    frontier: Sequence[tuple[float, float]] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of quality against mean cost per query; returns its path.

    ``frontier`` is a list of (cost, quality) points, e.g. a calibrator's Pareto frontier.
    The cost axis is logarithmic when the costs span a decade or more.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    pts = report.models
    costs = [p.cost_per_item for p in pts] + [report.cost_per_item, report.oracle_cost_per_item]
    if frontier:
        costs += [c for c, _ in frontier]
    positive = [c for c in costs if c > 0]
    log_x = bool(positive) and max(positive) / min(positive) >= 10 and len(positive) == len(costs)

    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=150)
    ax.grid(True, which="major", alpha=0.3)
    if log_x:
        ax.set_xscale("log")
        ax.grid(True, which="minor", alpha=0.1)

    if frontier:
        fx, fy = zip(*sorted(frontier), strict=True)
        ax.plot(
            fx, fy, "-", color=_FRONTIER, lw=1.8, alpha=0.9, label="calibrated frontier", zorder=2
        )
        ax.plot(fx, fy, "o", color=_FRONTIER, ms=3, alpha=0.9, zorder=2)

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
        s=70,
        color=_TOP,
        edgecolor="white",
        label=f"best single model ({top.name})",
        zorder=3,
    )
    for p in pts:
        ax.annotate(
            p.name,
            (p.cost_per_item, p.quality),
            xytext=(6, -3),
            textcoords="offset points",
            fontsize=7.5,
            color="#333333",
        )
    ax.axhline(top.quality, color=_TOP, lw=0.8, ls=":", alpha=0.7, zorder=1)

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
    rel = f" at {report.relative_cost:.2f}× top cost" if report.relative_cost is not None else ""
    ax.scatter(
        [report.cost_per_item],
        [report.quality],
        marker="D",
        s=80,
        color=_CASCADE,
        edgecolor="white",
        label=f"cascade: {100 * report.quality:.1f}%{rel}",
        zorder=5,
    )

    ax.xaxis.set_major_formatter(FuncFormatter(_dollars))
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
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


__all__ = ["plot_cost_quality"]
