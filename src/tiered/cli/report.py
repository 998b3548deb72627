"""``tiered report STORE``: write a run's HTML report again from its state store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiered.cli.app import app


@app.command("report")
def report_cmd(
    store: Annotated[
        Path,
        typer.Argument(help="The run's state store (default name: OUTPUT.tiered.sqlite)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write the report (default: STORE.html)."),
    ] = None,
) -> None:
    """Write the HTML report of a run from its state store: summary, set-up, plots over time.

    Works while the run goes on (as of its last checkpoint) and after it ended.
    """
    from rich.console import Console

    from tiered.eval.stream_report import write_stream_report
    from tiered.runner.summary import stored_run

    run = stored_run(store)
    path = out or store.with_name(store.name + ".html")
    name = "stdin" if run.input in ("", "-") else Path(run.input).name
    write_stream_report(
        path,
        history=run.history,
        summary=run.summary.to_dict(),
        config=run.config,
        title=f"tiered run: {name}",
        input=run.input,
    )
    Console().print(f"report written to {path}", soft_wrap=True, highlight=False)
