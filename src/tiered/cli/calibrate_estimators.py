"""``tiered calibrate LOG --estimators``: also try learned quality estimators.

Runs :func:`tiered.calibrate.learned.select.calibrate_with_estimators`: the calibrator with
confidence rules only, with the learned FrugalGPT scorer added, and cascade routing, all
cross-validated on the same folds; prints each family's held-out result and keeps the
best (so the estimators never make the result worse than confidence rules alone); a learned
family must beat confidence rules by 5% (``min_gain``) to be chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.calibrate.learned.select import Selection
    from tiered.replay.log import ReplayLog


def calibrate_with_estimators_cli(
    console: Console,
    replay_log: ReplayLog,
    out: Path,
    *,
    min_quality: str | None,
    budget: float | None,
    folds: int,
    seed: int,
    settings: Any = None,
    plot: Path | None = None,
) -> Selection:
    """Calibrate with every rule family, print the comparison, save the winner to ``out``."""
    from rich.table import Table

    from tiered.calibrate import Calibration
    from tiered.calibrate.learned.fit import RoutingFit
    from tiered.calibrate.learned.select import calibrate_with_estimators
    from tiered.cli.show import pct, print_calibration, usd

    with console.status("calibrating: confidence rules, learned scorer, cascade routing ..."):
        sel = calibrate_with_estimators(
            replay_log,
            min_quality=min_quality,
            budget=budget,
            folds=max(folds, 2),
            seed=seed,
            settings=settings,
        )
    table = Table(title=f"Rule families, {max(folds, 2)}-fold cross-validation (held out)")
    for col in ("family", "quality", "cost / query", "relative cost", "meets objective", "s"):
        table.add_column(col, justify="left" if col == "family" else "right")
    for r in sel.results:
        mark = " [bold green](chosen)[/]" if r is sel.winner else ""
        table.add_row(
            r.family + mark,
            pct(r.quality),
            usd(r.cost),
            f"{r.relative_cost:.3f}",
            "yes" if r.meets else "[red]no[/]",
            f"{r.seconds:.0f}",
        )
    console.print(table)
    console.print(
        "[dim]a learned family replaces confidence rules only when it does 5% better in "
        "cross-validation (the best of several looks better than it is)[/]"
    )
    for note in sel.notes:
        console.print(f"[dim]note: {note}[/]")
    fitted = sel.fitted
    if isinstance(fitted, Calibration):
        print_calibration(console, fitted)
    elif isinstance(fitted, RoutingFit):
        console.print(
            f"cascade routing over {', '.join(fitted.heads)}: λ = {fitted.fit.lam:.4g}/USD; on "
            f"the fitted log (cross-fitted estimates): quality {pct(fitted.fit.quality)}, cost "
            f"{usd(fitted.fit.cost)} per query, {fitted.relative_cost:.3f}× the cost of "
            f"{fitted.top_model}; every stage but the last: rule family cascade_route"
        )
    sel.save(out)
    console.print(f"cascade written to {out} (winner: {sel.winner.family})")
    if plot is not None:
        from tiered.core.spec import BuildContext
        from tiered.eval import evaluate_cascade, plot_cost_quality

        ctx = BuildContext(base_dir=out.resolve().parent, resources={"replay_log": replay_log})
        cascade = sel.spec.build(ctx)
        _, report = evaluate_cascade(cascade, replay_log)
        report.cascade = out.name
        frontier = (
            [(p.cost, p.quality) for p in fitted.frontier]
            if isinstance(fitted, Calibration)
            else None
        )
        plot_cost_quality(report, plot, frontier=frontier)
        console.print(f"plot written to {plot}")
    return sel


__all__ = ["calibrate_with_estimators_cli"]
