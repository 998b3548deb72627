"""Showing a run: the live progress bar (:class:`RichProgress`) and the summary table.

A run reports to any :class:`RunView`; these are the ones the command line uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from tiered.runner.counters import LearnerStats, RunCounters
    from tiered.runner.summary import RunSummary


class RunView(Protocol):
    """Told where a session stands after every batch."""

    def start(self, total: int | None, done: int) -> None:
        """``total`` records in the input (None: unknown), ``done`` of them before."""
        ...

    def update(
        self, counters: RunCounters, stats: LearnerStats, session_items: int, elapsed_s: float
    ) -> None: ...

    def stop(self) -> None: ...


class RichProgress:
    """A rich progress bar on ``console``: records, rate, expert share, USD, agreement."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total: int | None, done: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("expert [cyan]{task.fields[share]}[/]"),
            TextColumn("{task.fields[usd]}"),
            TextColumn("agree {task.fields[agree]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task(
            "tiered run", total=total, completed=done, rate="-", share="-", usd="-", agree="-"
        )
        self._progress.start()

    def update(
        self, counters: RunCounters, stats: LearnerStats, session_items: int, elapsed_s: float
    ) -> None:
        if self._progress is None or self._task is None:
            return
        n = max(counters.items, 1)
        agree = "-"
        if stats.agreement is not None:
            half = None
            if stats.ci_low is not None and stats.ci_high is not None:
                half = (stats.ci_high - stats.ci_low) / 2
            agree = f"{stats.agreement:.3f}" + (f" ± {half:.3f}" if half is not None else "")
        fields: dict[str, Any] = {
            "rate": f"{session_items / elapsed_s:,.0f} it/s" if elapsed_s > 0 else "-",
            "share": f"{100 * stats.expert_calls / n:.1f}%",
            "usd": f"${stats.usd_spent:,.2f} vs ${stats.usd_expert_only:,.2f} expert-only",
            "agree": agree,
        }
        self._progress.update(self._task, completed=counters.records, **fields)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4g}"


Row = tuple[str, str]


def summary_table(
    s: RunSummary,
    title: str,
    *,
    after_items: Sequence[Row] = (),
    after_agreement: Sequence[Row] = (),
) -> Table:
    """The rows every run's summary has (``tiered run``, ``tiered batch``), with a command's
    own rows after the items and after the audited agreement."""
    from rich.table import Table

    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    rej = f"{s.rejects:,} rejected → {s.rejects_path}" if s.rejects else "0 rejected"
    t.add_row("items", f"{s.items:,} answered of {s.records:,} records ({rej})")
    for row in after_items:
        t.add_row(*row)
    t.add_row(
        "expert share",
        f"{_pct(s.expert_share)} ({s.expert_calls:,} expert calls, {s.audits:,} of them audits)",
    )
    tgt = f", target {s.target:.3f}" if s.target is not None else ""
    t.add_row("agreement (audited)", s.agreement_text() + tgt)
    for row in after_agreement:
        t.add_row(*row)
    bound = s.bound_text()
    if bound is not None:
        t.add_row("agreement (anytime)", bound)
    if s.true_agreement is not None:
        t.add_row("agreement (true)", f"{s.true_agreement:.3f} vs the expert's label on every item")
    if s.accuracy is not None:
        extra = f" (expert alone: {s.expert_accuracy:.3f})" if s.expert_accuracy is not None else ""
        t.add_row("accuracy vs gold", f"{s.accuracy:.3f}{extra}")
    saving = f", saving {_pct(s.saving)}" if s.saving is not None else ""
    t.add_row("USD", f"{_usd(s.usd_spent)} spent vs {_usd(s.usd_expert_only)} expert-only{saving}")
    t.add_row("answered by", ", ".join(f"{k} {_pct(v)}" for k, v in s.stage_share.items()))
    return t


def print_summary(console: Console, s: RunSummary) -> None:
    """The final summary table."""
    t = summary_table(s, "tiered run: summary")
    rate = f"{s.items_per_s:,.0f}" if not math.isnan(s.items_per_s) else "-"
    t.add_row("wall time", f"{s.wall_s:,.1f} s ({rate} items/s)")
    if s.resumed_at is not None:
        t.add_row(
            "this session",
            f"resumed at record {s.resumed_at:,}; answered {s.session_items:,} items "
            f"in {s.session_s:,.1f} s",
        )
    console.print(t)
    alarm = s.alarm_text()
    if alarm is not None:
        console.print(alarm, style="bold red", markup=False, highlight=False)


__all__ = ["RichProgress", "RunView", "print_summary", "summary_table"]
