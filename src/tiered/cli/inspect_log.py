"""``tiered inspect PATH``: what a replay log holds (models, quality, cost, signals).

``inspect`` dispatches on the file's suffix through :data:`INSPECTORS`, so other kinds of
file (a cascade YAML) can be added by registering one more function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from tiered.cli.app import app
from tiered.cli.options import Rejects, SkipBad
from tiered.errors import ConfigError


def inspect_replay_log(path: Path, *, skip_bad: bool = False, rejects: Path | None = None) -> None:
    """Print a replay log's models (cheapest first): quality, cost, latency, gaps, signals."""
    from collections import Counter

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tiered.cli.show import ms, pct, print_load_summary, usd
    from tiered.eval.metrics import single_models
    from tiered.replay.load import load_replay

    console = Console(soft_wrap=True)  # paths and notes stay whole lines
    log = load_replay(path, skip_bad=skip_bad, reject_path=rejects)
    tasks = Counter(t for t in log.tasks if t is not None)
    if set(tasks) == {"synthetic"}:
        console.print("[bold magenta]SYNTHETIC DATA[/] (generated, not real model outputs)")
    top_tasks = escape(", ".join(f"{t} ({c:,})" for t, c in tasks.most_common(5)))
    more = f" and {len(tasks) - 5} more" if len(tasks) > 5 else ""
    console.print(
        f"{escape(str(path))}: {len(log):,} queries, {log.n_models} models"
        + (f"; tasks: {top_tasks}{more}" if tasks else "")
    )
    print_load_summary(console, log)
    points = single_models(log)
    has_latency = any(p.latency_ms is not None for p in points)
    table = Table(title="models, cheapest first")
    table.add_column("model", overflow="fold")  # never cut a model's name
    table.add_column("quality", justify="right")
    table.add_column("cost / query", justify="right")
    if has_latency:
        table.add_column("latency ms", justify="right")
    table.add_column("missing", justify="right")
    table.add_column("signals", overflow="fold")
    for p in points:
        sig = log.signals_of(p.name)
        cells = [escape(p.name), pct(p.quality), usd(p.cost_per_item)]
        if has_latency:
            cells.append(ms(p.latency_ms))
        cells += [str(p.missing), escape(", ".join(sig)) if sig else "[dim]none[/]"]
        table.add_row(*cells)
    if not has_latency:
        console.print("[dim]no latency recorded in this log[/]")
    console.print(table)
    gaps = log.rows_with_missing()
    if gaps:
        console.print(
            f"[yellow]{gaps} {'query lacks' if gaps == 1 else 'queries lack'} at least one "
            "model's output[/] (counted wrong for that model, at its mean cost)"
        )
    console.print("[dim]quality counts missing outputs as wrong; cost is USD per call[/]")


Inspector = Callable[..., None]
# suffix -> function(path, skip_bad=..., rejects=...)
INSPECTORS: dict[str, Inspector] = {".jsonl": inspect_replay_log, ".ndjson": inspect_replay_log}


@app.command("inspect")
def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="A replay log (JSONL) or a cascade file (YAML).")],
    log: Annotated[
        Path | None,
        typer.Argument(help="For a cascade file: the replay log to replay it on."),
    ] = None,
    skip_bad: SkipBad = False,
    rejects: Rejects = None,
) -> None:
    """Show what a file holds: for a replay log, its models, their quality, cost and signals."""
    inspector = INSPECTORS.get(path.suffix.lower())
    if inspector is None:
        raise ConfigError(
            f"cannot inspect a '{path.suffix}' file; known kinds: {', '.join(sorted(INSPECTORS))}",
            path=path,
        )
    if log is not None:
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise ConfigError("a second argument (a replay log) only goes with a cascade file")
        inspector(path, log=log, skip_bad=skip_bad, rejects=rejects)
        return
    inspector(path, skip_bad=skip_bad, rejects=rejects)


__all__ = ["INSPECTORS", "inspect_cmd", "inspect_replay_log"]
