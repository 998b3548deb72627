"""``tiered batch CONFIG INPUT -o OUTDIR``: label a large file or folder on Ray Data.

The config is a ``tiered run`` config. Its online cascade learns on a sample of the
input (``--learn`` records) in this process; then the cascade is frozen and Ray answers
the rest, one ``map_batches`` actor pool per stage, audits going on at scale. Answers go
to ``OUTDIR/part-NNNNNN.parquet``, one file per partition of the input; running the
same command again (after a kill, say) skips the partitions already written. The run
itself is :mod:`tiered.runner.ray_batch`.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tiered.cli.app import app

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.runner.ray_batch import BatchResult
    from tiered.runner.ray_plan import BatchPlan


@app.command("batch")
def batch_cmd(
    config: Annotated[
        Path, typer.Argument(help="Run config (YAML), as for `tiered run`.", show_default=False)
    ],
    input: Annotated[
        Path,
        typer.Argument(
            help="A JSONL, CSV or Parquet file, or a folder of them (read in path order).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Output folder: one Parquet file per partition (and rejects/, the saved state).",
            show_default=False,
        ),
    ],
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="A running Ray cluster: auto, or ray://HOST:PORT (default: start a local Ray "
            "for this run, using every CPU).",
            show_default=False,
        ),
    ] = None,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process", help="No Ray: run the same steps one after another in this process."
        ),
    ] = False,
    learn: Annotated[
        int,
        typer.Option(
            "--learn",
            min=0,
            help="Records the online cascade learns on before it is frozen (whole partitions, "
            "spread over the input; 0: no learning, every item to the expert).",
        ),
    ] = 5000,
    partition_records: Annotated[
        int,
        typer.Option("--partition-records", min=1, help="Records per partition (per output file)."),
    ] = 10_000,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="Input format: jsonl, csv or parquet (default: by extension)."
        ),
    ] = None,
    actor_cpus: Annotated[
        float | None,
        typer.Option(
            "--actor-cpus",
            min=0.01,
            help="CPUs each stage's actor asks Ray for (default: what lets every stage start).",
            show_default=False,
        ),
    ] = None,
    max_actors: Annotated[
        int | None,
        typer.Option(
            "--max-actors",
            min=1,
            help="Most actors per stage (default: the cluster's CPUs).",
            show_default=False,
        ),
    ] = None,
    ray_only: Annotated[
        bool,
        typer.Option(
            "--ray-only",
            help="Every partition on Ray (default: this process answers partitions too, from "
            "the last one back, while Ray starts and whenever it has nothing from Ray to write).",
        ),
    ] = False,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Start over: delete what an earlier run wrote in OUTDIR."),
    ] = False,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No live progress bar.")
    ] = False,
    throttle: Annotated[float, typer.Option("--throttle", hidden=True, min=0)] = 0.0,
) -> None:
    """Label a large file or folder with a cascade learned on a sample, on Ray Data.

    Resumable: each partition's answers are written at once, atomically; the same
    command again answers only the partitions not written yet, so every record is
    answered (or rejected) exactly once. --fresh starts over. As with `tiered run`, a
    record whose id an earlier record had goes to OUTDIR/rejects/.
    """
    from rich.console import Console

    from tiered.runner.ray_batch import BatchRun
    from tiered.runner.ray_plan import make_batch_plan

    if in_process and ray is not None:
        raise typer.BadParameter("give --ray or --in-process, not both", param_hint="--ray")
    if in_process and ray_only:
        raise typer.BadParameter(
            "give --ray-only or --in-process, not both", param_hint="--ray-only"
        )
    plan = make_batch_plan(
        config,
        input,
        output,
        format=format,
        partition_records=partition_records,
        learn_records=learn,
        fresh=fresh,
        ray_address=ray,
        in_process=in_process,
        actor_cpus=actor_cpus,
        max_actors=max_actors,
        local_share=not ray_only,
        throttle_s=throttle,
    )
    console = Console()
    err = Console(stderr=True)
    # SIGTERM stops like Ctrl-C: the local Ray is shut down; written partitions stay
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if no_progress or not err.is_terminal:
            result = BatchRun(plan).run()
        else:
            result = _with_progress(plan, err)
    finally:
        signal.signal(signal.SIGTERM, old)
    _print(console, result)


def _with_progress(plan: BatchPlan, err: Console) -> BatchResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from tiered.runner.ray_batch import BatchRun

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress("partitions", *columns, console=err, transient=True) as bar:
        task = bar.add_task("partitions", total=None)
        return BatchRun(
            plan, on_partition=lambda done, total: bar.update(task, completed=done, total=total)
        ).run()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print(console: Console, r: BatchResult) -> None:
    from tiered.runner.progress import summary_table

    s = r.summary
    partitions = (
        f"{r.partitions:,} in {s.output}: {r.written:,} written now, {r.done_before:,} before"
    )
    at_scale: list[tuple[str, str]] = []
    e = r.at_scale
    if e is not None and e.audits:
        below = s.target is not None and e.high < s.target
        at_scale.append((
            "  frozen, at scale",
            f"{e.agreement:.3f} [{e.low:.3f}, {e.high:.3f}] from {e.audits:,} audits"
            + (" [bold red]below the target[/]: learn on more records (--learn)" if below else ""),
        ))  # fmt: skip
    t = summary_table(
        s,
        "tiered batch: summary",
        after_items=[("partitions", partitions)],
        after_agreement=at_scale,
    )
    learned = f"{r.learned_records:,} records" + (f" in {r.learn_s:.1f} s" if r.learn_s else "")
    t.add_row("learned on", learned)
    if r.apply_items:
        here = f"; {r.local_items:,} of them in this process" if r.local_items else ""
        t.add_row(
            "at scale",
            f"{r.apply_items:,} items in {r.apply_s:.1f} s ({r.apply_items_per_s:,.0f} items/s, "
            f"{r.engine}{here})",
        )
    t.add_row("wall time", f"{s.wall_s:.1f} s this session")
    console.print(t)
