"""What a run did, over all its sessions: :class:`RunSummary`."""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tiered.runner.counters import LearnerStats, RunCounters


@dataclass
class RunSummary:
    """What a run did, over all its sessions (a resumed run counts from the start).

    ``stop_signal`` is the signal that stopped the run early (after a clean checkpoint);
    ``exit_code`` is what a command should exit with: 0 when the run went to its end (or
    its ``--limit``), else 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
    """

    records: int
    items: int
    rejects: int
    expert_calls: int
    expert_share: float
    audits: int
    agreement: float | None
    ci_low: float | None
    ci_high: float | None
    target: float | None
    usd_spent: float
    usd_expert_only: float
    wall_s: float
    stage_share: dict[str, float]
    accuracy: float | None = None
    expert_accuracy: float | None = None
    true_agreement: float | None = None
    resumed_at: int | None = None
    session_items: int = 0
    session_s: float = 0.0
    stopped_early: bool = False
    stop_signal: int | None = None
    output: str = ""
    rejects_path: str = ""
    store: str = ""
    replay_records: int = 0

    @property
    def saving(self) -> float | None:
        if self.usd_expert_only <= 0:
            return None
        return 1.0 - self.usd_spent / self.usd_expert_only

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def exit_code(self) -> int:
        if not self.stopped_early:
            return 0
        return 128 + (self.stop_signal or signal.SIGINT)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["saving"] = self.saving
        out["items_per_s"] = self.items_per_s
        return out


def summarise(
    counters: RunCounters,
    stats: LearnerStats,
    stage_names: Sequence[str],
    *,
    target: float | None,
    **session: Any,
) -> RunSummary:
    """The summary from the run's counters and the learner's stats; ``session`` holds the
    remaining :class:`RunSummary` fields (this session's figures, paths, how it stopped)."""
    c = counters
    n = c.items
    share = {k: (c.stage_counts.get(k, 0) / n if n else 0.0) for k in stage_names}
    return RunSummary(
        records=c.records,
        items=n,
        rejects=c.rejects,
        expert_calls=stats.expert_calls,
        expert_share=stats.expert_calls / n if n else 0.0,
        audits=stats.audits,
        agreement=stats.agreement,
        ci_low=stats.ci_low,
        ci_high=stats.ci_high,
        target=target,
        usd_spent=stats.usd_spent,
        usd_expert_only=stats.usd_expert_only,
        wall_s=c.wall_s,
        stage_share=share,
        accuracy=c.ratio(c.gold_correct, c.gold_n),
        expert_accuracy=c.ratio(c.expert_gold_correct, c.expert_gold_n),
        true_agreement=c.ratio(c.truth_agree, c.truth_n),
        replay_records=c.replay_records,
        **session,
    )


__all__ = ["RunSummary", "summarise"]
