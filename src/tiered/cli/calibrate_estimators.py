"""What ``tiered calibrate LOG`` prints and saves: the rule families compared, and a verdict.

Runs :func:`tiered.calibrate.auto.calibrate_log`: the calibrator with confidence rules
and, when the log's signals are weak (or with ``--learned always``), the learned families
(cascade routing, the FrugalGPT scorer) on the same folds; a learned family must beat
confidence rules by 5% in cross-validation to be chosen. Prints each family's held-out
result, which won and why, and one line saying what to use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.calibrate.auto import Recommendation
    from tiered.replay.log import ReplayLog


def _families_table(console: Console, rec: Recommendation, folds: int) -> None:
    from rich.table import Table

    from tiered.cli.show import pct, usd

    sel = rec.selection
    if sel is None:
        return
    table = Table(title=f"Rule families, {folds}-fold cross-validation (held out)")
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


def recommend_cli(
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
    learned: str = "auto",
) -> Recommendation:
    """Calibrate, print the families, the chosen cascade and the verdict; save to ``out``."""
    from rich.markup import escape

    from tiered.calibrate.auto import calibrate_log
    from tiered.calibrate.learned.fit import RoutingFit
    from tiered.cli.show import pct, print_calibration, usd

    status = "calibrating (confidence rules; learned families if the log's signals are weak) ..."
    with console.status(status):
        rec = calibrate_log(
            replay_log,
            min_quality=min_quality,
            budget=budget,
            folds=folds,
            seed=seed,
            settings=settings,
            learned=learned,  # type: ignore[arg-type]
        )
    _families_table(console, rec, max(folds, 2))
    fitted = rec.selection.fitted if rec.selection is not None else None
    if isinstance(fitted, RoutingFit) and rec.family == "routing":
        console.print(
            f"cascade routing over {escape(', '.join(fitted.heads))}: λ = {fitted.fit.lam:.4g}"
            f"/USD; on the fitted log (cross-fitted estimates): quality "
            f"{pct(fitted.fit.quality)}, cost {usd(fitted.fit.cost)} per query, "
            f"{fitted.relative_cost:.3f}× the cost of {escape(fitted.top_model)}"
        )
    elif rec.family == "scorer" and rec.selection is not None:
        print_calibration(console, rec.selection.fitted)
    else:
        print_calibration(console, rec.calibration)
    for note in rec.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    console.print(f"[dim]rule family: {escape(rec.family)} ({escape(rec.why)})[/]", soft_wrap=True)
    console.print(f"[bold]verdict:[/] {escape(rec.verdict.line)}", soft_wrap=True)
    rec.save(out)
    console.print(f"cascade written to {out} ({rec.seconds:.1f} s)")
    if plot is not None:
        from tiered.core.spec import BuildContext
        from tiered.eval import evaluate_cascade, plot_cost_quality

        ctx = BuildContext(base_dir=out.resolve().parent, resources={"replay_log": replay_log})
        cascade = rec.spec.build(ctx)
        _, report = evaluate_cascade(cascade, replay_log)
        report.cascade = out.name
        frontier = [(p.cost, p.quality) for p in rec.calibration.frontier]
        target = rec.calibration.target
        plot_cost_quality(report, plot, frontier=frontier, target=target, budget=budget)
        console.print(f"plot written to {plot}")
    return rec


__all__ = ["recommend_cli"]
