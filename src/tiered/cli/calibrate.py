"""``tiered calibrate LOG``: search cascades on a replay log and save the chosen one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tiered.cli.app import app
from tiered.cli.options import Rejects, SkipBad
from tiered.cli.show import print_calibration, print_load_summary

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.calibrate import Calibration


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
        typer.Option("--estimators", help="Same as --learned always.", hidden=True),
    ] = False,
    learned: Annotated[
        str,
        typer.Option(
            "--learned",
            help="Learned rule families (quality estimators: a FrugalGPT scorer, cascade "
            "routing): 'auto' trains them when the log's confidence signals are weak (within "
            "2 minutes), 'always', or 'never'. They are kept only if they beat confidence "
            "rules by 5% in cross-validation.",
        ),
    ] = "auto",
    confidence: Annotated[
        float | None,
        typer.Option(
            "--confidence",
            help="Certify the quality target with this confidence, e.g. 0.95: search on part "
            "of the log, test on the rest, and promise quality >= target - tolerance on new "
            "data from the same source (the best single model alone if nothing cheaper "
            "passes).",
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", help="How far below the target a certificate may promise."),
    ] = 0.005,
) -> None:
    """Find the cheapest cascade meeting a quality target (or the best within a budget)."""
    from rich.console import Console

    from tiered.calibrate import SearchSettings
    from tiered.calibrate.objective import Objective
    from tiered.errors import ConfigError
    from tiered.replay.load import load_replay

    Objective.make(min_quality, budget)  # bad parameters fail before the log is read
    if learned not in ("auto", "always", "never"):
        raise ConfigError(
            f"The 'learned' parameter must be auto, always or never. Got {learned!r} instead.",
            field="learned",
        )
    if confidence is not None:
        from tiered.calibrate.certify import check_certify_options

        check_certify_options(confidence, tolerance, budget, estimators)
    settings = SearchSettings(max_stages=max_stages, order=order)  # type: ignore[arg-type]
    console = Console()
    replay_log = load_replay(log, skip_bad=skip_bad, reject_path=rejects)
    print_load_summary(console, replay_log)
    if confidence is None:
        from tiered.cli.calibrate_estimators import recommend_cli

        rec = recommend_cli(
            console, replay_log, out, min_quality=min_quality, budget=budget, folds=folds,
            seed=seed, settings=settings, plot=plot, learned="always" if estimators else learned,
        )  # fmt: skip
        _print_certificate(console, rec.calibration)
        return
    from tiered.calibrate.certify import certify

    with console.status("certifying ..."):
        cal = certify(
            replay_log,
            "top" if min_quality is None else min_quality,
            confidence=confidence,
            tolerance=tolerance,
            seed=seed,
            settings=settings,
        )
    print_calibration(console, cal)
    _print_certificate(console, cal)
    cal.save(out)
    console.print(f"cascade written to {out} ({cal.seconds:.1f} s)")
    if plot is not None:
        from tiered.core.spec import BuildContext
        from tiered.eval import evaluate_cascade, plot_cost_quality

        cascade = cal.spec.build(BuildContext(resources={"replay_log": replay_log}))
        _, report = evaluate_cascade(cascade, replay_log)
        report.cascade = out.name
        frontier = [(p.cost, p.quality) for p in cal.frontier]
        plot_cost_quality(report, plot, frontier=frontier, target=cal.target, budget=budget)
        console.print(f"plot written to {plot}")


def _print_certificate(console: Console, cal: Calibration) -> None:
    from rich.markup import escape

    got = cal.certificate
    if got is None:
        console.print(
            "[dim]not certified: on new data the quality may land below the target "
            "(--confidence 0.95 certifies it)[/]"
        )
    elif got.certified and not got.fallback:
        console.print(f"[bold green]certificate:[/] {escape(got.statement())}")
    else:
        console.print(f"[bold yellow]certificate:[/] {escape(got.statement())}")


__all__ = ["calibrate_cmd"]
