"""``tiered calibrate LOG``: search cascades on a replay log and save the chosen one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tiered.cli.app import app
from tiered.cli.options import Rejects, SkipBad

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.calibrate import Calibration, FrontierPoint


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

    from tiered.calibrate import rule_text
    from tiered.cli.evaluate import pct, usd

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
            "always (last stage)" if last else escape(rule_text(chosen.rules[i])),
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
    for note in cal.notes:
        console.print(f"[dim]note: {note}[/]")


@app.command("calibrate")
def calibrate_cmd(
    log: Annotated[Path, typer.Argument(help="Replay log (JSONL) to calibrate on.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the cascade (YAML).")],
    min_quality: Annotated[
        str | None,
        typer.Option(
            "--min-quality",
            help="Quality target: top, top-0.01, top*0.95 or a number such as 0.85 "
            "(default top when no --budget).",
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="Best quality at a mean cost per query of at most USD."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the cost–quality frontier (PNG) here.")
    ] = None,
    folds: Annotated[
        int, typer.Option("--folds", help="Cross-validation folds (0: no cross-validation).")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold assignment.")] = 0,
    max_stages: Annotated[
        int, typer.Option("--max-stages", help="Most stages per cascade, the last included.")
    ] = 4,
    order: Annotated[
        str,
        typer.Option("--order", help="Stage order: 'cost' (cheap to expensive) or 'any'."),
    ] = "cost",
    skip_bad: SkipBad = False,
    rejects: Rejects = None,
    estimators: Annotated[
        bool,
        typer.Option(
            "--estimators",
            help="Also try learned quality estimators (a FrugalGPT scorer, cascade routing); "
            "keep the rule family that cross-validates best (slower).",
        ),
    ] = False,
) -> None:
    """Find the cheapest cascade meeting a quality target (or the best within a budget)."""
    from rich.console import Console

    from tiered.calibrate import SearchSettings, calibrate
    from tiered.calibrate.objective import Objective
    from tiered.cli.evaluate import print_load_summary
    from tiered.replay.load import load_replay

    Objective.make(min_quality, budget)  # bad parameters fail before the log is read
    settings = SearchSettings(max_stages=max_stages, order=order)  # type: ignore[arg-type]
    console = Console()
    replay_log = load_replay(log, skip_bad=skip_bad, reject_path=rejects)
    print_load_summary(console, replay_log)
    if estimators:
        from tiered.cli.calibrate_estimators import calibrate_with_estimators_cli

        calibrate_with_estimators_cli(
            console,
            replay_log,
            out,
            min_quality=min_quality,
            budget=budget,
            folds=folds,
            seed=seed,
            settings=settings,
            plot=plot,
        )
        return
    with console.status("calibrating ..."):
        cal = calibrate(
            replay_log,
            min_quality=min_quality,
            budget=budget,
            folds=folds,
            seed=seed,
            settings=settings,
        )
    print_calibration(console, cal)
    cal.save(out)
    console.print(f"cascade written to {out} ({cal.seconds:.1f} s)")
    if plot is not None:
        from tiered.core.spec import BuildContext
        from tiered.eval import evaluate_cascade, plot_cost_quality

        cascade = cal.spec.build(BuildContext(resources={"replay_log": replay_log}))
        _, report = evaluate_cascade(cascade, replay_log)
        report.cascade = out.name
        plot_cost_quality(report, plot, frontier=[(p.cost, p.quality) for p in cal.frontier])
        console.print(f"plot written to {plot}")


__all__ = ["calibrate_cmd", "print_calibration"]
