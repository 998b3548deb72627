"""``tiered eval CASCADE LOG``: replay a cascade over a recorded log and report its metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tiered.cli.app import app
from tiered.cli.options import Rejects, SkipBad
from tiered.cli.show import ms, pct, print_load_summary, usd

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.eval.metrics import EvalReport


def print_report(console: Console, report: EvalReport) -> None:
    """The eval table: cascade, best single model, oracle bound, then every single model."""
    from rich.markup import escape
    from rich.table import Table

    if report.synthetic:
        console.print("[bold magenta]SYNTHETIC DATA[/] (generated, not real model outputs)")
    name = Path(report.log).name if report.log else "replay log"
    title = f"{report.cascade or 'cascade'} on {name}: {report.n_items:,} queries"
    table = Table(title=escape(title))
    has_latency = report.latency_ms is not None
    table.add_column("", overflow="fold")  # never cut a model's name
    table.add_column("quality", justify="right")
    table.add_column("cost / query", justify="right")
    table.add_column("relative cost", justify="right")
    if has_latency:
        table.add_column("latency ms", justify="right")
    top = report.top_cost_per_item

    def row(label: str, q: float, c: float, lat: float | None, end_section: bool = False) -> None:
        cells = [label, pct(q), usd(c), f"{c / top:.3f}" if top > 0 else "-"]
        table.add_row(*cells, *([ms(lat)] if has_latency else []), end_section=end_section)

    row("[bold]cascade[/]", report.quality, report.cost_per_item, report.latency_ms)
    best = next(p for p in report.models if p.name == report.top_model)
    row(f"top model: {escape(best.name)}", best.quality, best.cost_per_item, best.latency_ms)
    row("oracle bound", report.oracle_quality, report.oracle_cost_per_item, None, end_section=True)
    for p in report.models:
        if p.name != best.name:
            row(f"[dim]{escape(p.name)}[/]", p.quality, p.cost_per_item, p.latency_ms)
    console.print(table)
    console.print(
        "[dim]relative cost = cost / the top model's cost; oracle = cheapest correct model "
        "per query (none correct: the cheapest model)[/]"
    )
    share = escape(", ".join(f"{k} {pct(v)}" for k, v in report.stage_share.items()))
    console.print(f"answered by stage: {share}")
    if report.missing_outputs:
        stages = escape(", ".join(f"{k} {v}" for k, v in report.missing_by_stage.items() if v))
        n = report.missing_outputs
        console.print(
            f"[yellow]{n} {'query' if n == 1 else 'queries'} lacked a recorded output for a "
            f"stage that ran[/] ({stages}): counted wrong there and charged that model's mean cost"
        )
    else:
        console.print("every stage that ran had a recorded output (0 queries lacked outputs)")
    if report.n_quality_unknown:
        console.print(
            f"[yellow]{report.n_quality_unknown} answers have no known quality[/] "
            "(a stage that is not a replay model answered them); quality is over the rest"
        )


@app.command("eval")
def eval_cmd(
    cascade: Annotated[Path, typer.Argument(help="Cascade file (YAML).")],
    log: Annotated[Path, typer.Argument(help="Replay log (JSONL) to replay the cascade on.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics as JSON here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a cost–quality plot (PNG) here.")
    ] = None,
    curve: Annotated[
        Path | None,
        typer.Option(
            "--curve",
            help="Replay the frontier 'tiered calibrate' recorded in CASCADE on LOG and write "
            "its error–cost curve here (.csv, else JSON) with its normalised area (mean "
            "error over its cost range); on a log it was not fitted on, the held-out curve.",
        ),
    ] = None,
    skip_bad: SkipBad = False,
    rejects: Rejects = None,
) -> None:
    """Replay CASCADE over LOG: quality, cost, relative cost, stage shares, oracle bound."""
    from rich.console import Console

    from tiered.core.spec import BuildContext, load_cascade
    from tiered.eval import evaluate_cascade, plot_cost_quality
    from tiered.replay.load import load_replay

    console = Console(soft_wrap=True)  # paths and notes stay whole lines
    replay_log = load_replay(log, skip_bad=skip_bad, reject_path=rejects)
    print_load_summary(console, replay_log)
    ctx = BuildContext(base_dir=cascade.resolve().parent, resources={"replay_log": replay_log})
    built = load_cascade(cascade, ctx)
    _, report = evaluate_cascade(built, replay_log)
    report.cascade = cascade.name
    print_report(console, report)
    if json_out is not None:
        report.save_json(json_out)
        console.print(f"metrics written to {json_out}")
    if plot is not None:
        plot_cost_quality(report, plot)
        console.print(f"plot written to {plot}")
    if curve is not None:
        from tiered.calibrate.curve import frontier_curve
        from tiered.core.spec import CascadeSpec
        from tiered.replay.view import LogView

        got = frontier_curve(CascadeSpec.load(cascade), LogView.of(replay_log))
        got.save(curve)
        if got.curve is None:
            console.print(
                f"curve written to {curve}: single models and the cascade only ({cascade.name} "
                "keeps no frontier; 'tiered calibrate' records one)"
            )
        else:
            lo, hi = got.cost_range
            console.print(
                f"curve written to {curve}: {len(got.curve.cost)} frontier cascades; normalised "
                f"area under the error–cost curve {got.area:.4f} (mean error over "
                f"{usd(lo)}–{usd(hi)} per query)"
            )


__all__ = ["eval_cmd", "print_report"]
