"""How commands show results: numbers for people, what the loader did, calibration tables.

Shared by several commands (a module of its own, so that command modules never import
each other for their helpers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.calibrate import Calibration, FrontierPoint
    from tiered.replay.log import ReplayLog


def usd(x: float | None) -> str:
    """A cost for people: three significant digits, no exponent."""
    from tiered.eval.metrics import format_usd

    return format_usd(x)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def print_load_summary(console: Console, log: ReplayLog) -> None:
    """What the loader did besides reading: skipped lines, merges, notes."""
    from rich.markup import escape

    if log.skipped:
        console.print(
            f"[yellow]skipped {log.skipped} bad line{'s' if log.skipped != 1 else ''}[/]; "
            f"written with their reasons to {escape(str(log.reject_path))}"
        )
    for note in log.notes:
        console.print(f"[dim]note: {escape(note)}[/]")


def _highlights(cal: Calibration, k: int = 8) -> list[FrontierPoint]:
    """A few frontier points spread over its cost range, plus the chosen point."""
    pts = cal.frontier
    if len(pts) <= k:
        picked = list(pts)
    else:
        idx = {round(i * (len(pts) - 1) / (k - 1)) for i in range(k)}
        picked = [pts[i] for i in sorted(idx)]
    if all(p.config is not cal.chosen.config for p in picked):
        picked.append(cal.chosen)
    return sorted(picked, key=lambda p: p.cost)


def print_calibration(console: Console, cal: Calibration) -> None:
    """The frontier highlights, then the chosen cascade stage by stage."""
    from rich.markup import escape
    from rich.table import Table

    top = cal.top_cost

    def rel(c: float) -> str:
        return f"{c / top:.3f}" if top > 0 else "-"

    name = Path(cal.log_path).name if cal.log_path else "replay log"
    table = Table(
        title=f"Cost–quality frontier on {name}: {len(cal.frontier)} cascades "
        f"({cal.evaluated:,} scored)"
    )
    table.add_column("")
    table.add_column("quality", justify="right")
    table.add_column("cost / query", justify="right")
    table.add_column("relative cost", justify="right")
    table.add_column("cascade")
    for p in _highlights(cal):
        mark = "[bold green]chosen[/]" if p.config is cal.chosen.config else ""
        table.add_row(mark, pct(p.quality), usd(p.cost), rel(p.cost), escape(p.text()))
    table.add_row(
        "best single", pct(cal.top_quality), usd(top), rel(top), escape(cal.top_model),
        end_section=True,
    )  # fmt: skip
    table.add_row("oracle", pct(cal.oracle_quality), usd(cal.oracle_cost), rel(cal.oracle_cost), "")
    console.print(table)

    chosen = cal.chosen
    stages = Table(title=f"Chosen cascade ({cal.objective.describe(cal.target)})")
    stages.add_column("#", justify="right")
    stages.add_column("stage")
    stages.add_column("rule family")
    stages.add_column("accepts when")
    for i, s in enumerate(chosen.stages):
        last = i == len(chosen.stages) - 1
        stages.add_row(
            str(i + 1),
            escape(s),
            "-" if last else escape(chosen.families[i]),
            "always (last stage)" if last else escape(chosen.rules[i].describe()),
        )
    console.print(stages)
    console.print(
        f"expected on the fitted log: quality [bold]{pct(chosen.quality)}[/], cost "
        f"[bold]{usd(chosen.cost)}[/] per query, [bold]{rel(chosen.cost)}[/]× the cost of "
        f"{escape(cal.top_model)} ({pct(cal.top_quality)})"
    )
    if cal.cv is not None:
        cv = cal.cv
        console.print(
            f"{cv.folds}-fold cross-validation (held out, thresholds refit per fold): quality "
            f"{pct(cv.quality)} vs {pct(cv.top_quality)} for the best single model, relative "
            f"cost {cv.relative_cost:.3f}; {cv.structures_tried} structures tried"
        )
        if cv.margin < 0 and cv.reference_quality is not None:  # aimed below the target
            console.print(
                f"aimed {100 * -cv.margin:.1f} points below the target on the fitted log "
                f"(the best model's quality there is partly luck): held out, the cascade "
                f"reaches {pct(cv.quality)} against the target's {pct(cv.reference_quality)}"
            )
    for note in cal.notes:
        console.print(f"[dim]note: {note}[/]")


__all__ = ["ms", "pct", "print_calibration", "print_load_summary", "usd"]
