"""``tiered inspect cascade.yaml [LOG]``: each stage's gate and rule, and what they did.

Registered in :data:`tiered.cli.inspect_log.INSPECTORS` for ``.yaml``/``.yml``. With a
replay log (the ``LOG`` argument, else the log the cascade says it was fitted on), the
cascade is replayed through the engine and, per stage, the items that reached it are
split into those it answered, passed on, or skipped (its gate said no), each with its
quality: the stage's own answers' quality, and for the items it let go, the quality they
finally got.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered.cli.inspect_log import INSPECTORS

if TYPE_CHECKING:
    import numpy as np

    from tiered.core.rules import DeferralRule


def describe_rule(rule: DeferralRule | None) -> str:
    """A rule in one line ("-" for none)."""
    return "-" if rule is None else rule.describe()


def _find_log(spec_path: Path, given: Path | None, fitted_on: Any) -> Path | None:
    if given is not None:
        return given
    if not isinstance(fitted_on, str):
        return None
    for p in (Path(fitted_on), spec_path.parent / fitted_on):
        if p.exists():
            return p
    return None


def _q(values: np.ndarray) -> str:
    import numpy as np

    v = values[np.isfinite(values)]
    return f"{v.mean():.3f}" if v.size else "-"


def inspect_cascade(
    path: Path, *, log: Path | None = None, skip_bad: bool = False, rejects: Path | None = None
) -> None:
    """Print the cascade's stages with their gates and rules, and their outcome on a log."""
    import numpy as np
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tiered.core.spec import BuildContext, CascadeSpec, load_cascade
    from tiered.eval.metrics import check_signals
    from tiered.replay.load import load_replay
    from tiered.replay.model import Replay, replay_items

    console = Console(soft_wrap=True)
    spec = CascadeSpec.load(path)
    log_path = _find_log(path, log, spec.metadata.get("fitted_on"))
    console.print(f"{escape(str(path))}: cascade '{escape(spec.name)}', {len(spec.stages)} stages")
    if spec.metadata.get("objective"):
        console.print(f"objective: {escape(str(spec.metadata['objective']))}")
    certificate = spec.metadata.get("certificate")
    if isinstance(certificate, dict) and certificate.get("statement"):
        console.print(f"certificate: {escape(str(certificate['statement']))}")
    table = Table(title=escape("stages" + (f" on {log_path}" if log_path else "")))
    for col in ("stage", "gate", "rule"):
        table.add_column(col, overflow="fold")
    last = len(spec.stages) - 1
    if log_path is None:
        for k, s in enumerate(spec.stages):
            gate = describe_rule(s.gate) if k < last else "-"
            rule = describe_rule(s.rule) if k < last else "answers the rest"
            table.add_row(escape(s.name), escape(gate), escape(rule))
        console.print(table)
        console.print(
            "[dim]give a replay log (tiered inspect CASCADE LOG) to see what each stage did[/]"
        )
        return
    replay = load_replay(log_path, skip_bad=skip_bad, reject_path=rejects)
    ctx = BuildContext(base_dir=path.resolve().parent, resources={"replay_log": replay})
    cascade = load_cascade(path, ctx)  # build errors name the file
    check_signals(cascade)  # a signal the log lacks: named before anything runs
    result = cascade.run(replay_items(replay))
    n = len(result)
    for col in (
        "reached",
        "answered (q)",
        "passed on (q → final)",
        "skipped (q → final)",
    ):
        table.add_column(col, justify="right")
    for k, s in enumerate(spec.stages):
        gate = describe_rule(s.gate) if k < last else "-"
        rule = describe_rule(s.rule) if k < last else "answers the rest"
        cells = [escape(s.name), escape(gate), escape(rule)]
        step = result.steps[k] if k < len(result.steps) else None
        if step is None:
            table.add_row(*cells, "0", "-", "-", "-")
            continue
        own = (
            step.answers.quality
            if step.answers.quality is not None
            else np.full(len(step.indices), np.nan)
        )
        acc = step.accepted
        passed = step.indices[~acc]
        skipped = step.skipped
        reached = len(step.indices) + len(skipped)
        model = cascade.stages[k].model
        would = (
            replay.quality[skipped, model.column]
            if isinstance(model, Replay) and skipped.size
            else np.full(skipped.size, np.nan)
        )
        table.add_row(
            *cells,
            f"{reached:,}",
            f"{int(acc.sum()):,} ({_q(own[acc])})",
            f"{passed.size:,} ({_q(own[~acc])} → {_q(result.quality[passed])})",
            f"{skipped.size:,} ({_q(would)} → {_q(result.quality[skipped])})"
            if skipped.size
            else "0",
        )
    console.print(table)
    q = result.mean_quality()
    quality = "unknown" if math.isnan(q) else f"{q:.4f}"
    console.print(
        f"overall on {n:,} queries: quality {quality}, cost ${result.mean_cost():.4g}/query"
    )
    console.print(
        "[dim]q: quality of this stage's answers for those items (for skipped ones, what it "
        "would have scored); final: the quality the cascade finally gave them[/]"
    )


INSPECTORS.setdefault(".yaml", inspect_cascade)
INSPECTORS.setdefault(".yml", inspect_cascade)

__all__ = ["describe_rule", "inspect_cascade"]
