"""What a run did, over all its sessions: :class:`RunSummary`."""

from __future__ import annotations

import math
import signal
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tiered.errors import StoreError
from tiered.runner.counters import LearnerStats, RunCounters


@dataclass
class RunSummary:
    """What a run did, over all its sessions (a resumed run counts from the start).

    ``stop_signal`` is the signal that stopped the run early (after a clean checkpoint);
    ``exit_code`` is what a command should exit with: 0 when the run went to its end (or
    its ``--limit``), else 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).

    ``cs_low``/``cs_high`` bound the agreement at every item at once (with probability
    ``confidence`` each); ``alarms`` counts how often ``cs_high`` fell below the target
    (``first_alarm_at``: after how many items; ``below_target``: still below at the end;
    ``escalate``: every item then went to the expert).
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
    cs_low: float | None = None
    cs_high: float | None = None
    confidence: float | None = None
    below_target: bool = False
    alarms: int = 0
    first_alarm_at: int | None = None
    escalate: bool = True

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

    def agreement_text(self) -> str:
        """The audited agreement for people, with its 95% interval once audits measured it.

        Before any cheap stage answered, every output is the expert's own label: agreement
        is 1 by construction, and an interval of [1.000, 1.000] would read as a measurement.
        """
        if self.agreement is None:
            return "- (no audits yet)"
        if self.audits == 0:
            return f"{self.agreement:.3f} (every answer is the expert's own: nothing to audit)"
        ci = ""
        if self.ci_low is not None and self.ci_high is not None:
            ci = f" [{self.ci_low:.3f}, {self.ci_high:.3f}] (95% CI)"
        return f"{self.agreement:.3f}{ci}"

    @property
    def target_missed(self) -> bool:
        """The alarm was raised, or the run ended with its upper bound below the target."""
        if self.alarms > 0:
            return True
        return self.target is not None and self.cs_high is not None and self.cs_high < self.target

    def bound_text(self) -> str | None:
        """The anytime-valid lower bound for people (None before any item)."""
        if self.cs_low is None or self.items == 0:
            return None
        conf = f" with {100 * self.confidence:.0f}% confidence" if self.confidence else ""
        return f"agreement >= {self.cs_low:.3f}{conf} at every item"

    def alarm_text(self) -> str | None:
        """What the alarm did, when it was raised (None when it never was)."""
        if self.alarms == 0:
            return None
        at = f" at item {self.first_alarm_at:,}" if self.first_alarm_at is not None else ""
        times = f" ({self.alarms} times)" if self.alarms > 1 else ""
        text = f"ALARM: the upper bound fell below the target{at}{times}"
        if self.escalate:
            text += "; every item went to the expert until it recovered"
        if self.below_target:
            end = (
                f" ({self.cs_high:.3f} < {self.target:.3f})" if self.cs_high and self.target else ""
            )
            text += f"; it was still below at the end{end}"
        return text

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
        cs_low=stats.cs_low,
        cs_high=stats.cs_high,
        confidence=stats.confidence,
        below_target=stats.below_target,
        alarms=stats.alarms,
        first_alarm_at=stats.first_alarm_at,
        **session,
    )


@dataclass(frozen=True)
class StoredRun:
    """What a state store holds of a run: enough to write its report again."""

    summary: RunSummary
    history: list[dict[str, Any]]
    config: dict[str, Any]
    input: str


def stored_run(path: str | Path) -> StoredRun:
    """The run a state store (``tiered run --store``) holds, as of its last checkpoint."""
    from tiered.config.run import EXPERT_STAGE, RunConfig
    from tiered.store.runs import RunStore

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no state store at {path} (a run writes it next to its output)")
    with RunStore(path) as store:
        identity = store.identity()
        checkpoint = store.latest(with_learner=False)
        if identity is None or checkpoint is None:
            raise StoreError(f"the state store {path} holds no checkpointed run yet")
        history, config = store.history(), store.config()
    counters = RunCounters.from_json(checkpoint.counters)
    last = history[-1] if history else {}
    # the last history row holds the learner's stats as of the checkpoint
    zero = {"n_items": 0, "expert_calls": 0, "audits": 0, "usd_spent": 0.0, "usd_expert_only": 0.0}
    zero |= {"below_target": False, "alarms": 0}
    saved: dict[str, Any] = {
        f.name: last.get(f.name, zero.get(f.name)) for f in fields(LearnerStats)
    }
    stats = LearnerStats(**saved)
    run = RunConfig.model_validate(config)
    summary = summarise(
        counters,
        stats,
        [s.stage_name for s in run.cheap] + [EXPERT_STAGE],
        target=run.online.target_agreement,
        escalate=run.online.escalate,
        output=identity.output,
        store=str(path),
    )
    # in the order of the config file's keys (the store keeps them sorted)
    ordered = run.model_dump(mode="json")
    return StoredRun(summary=summary, history=history, config=ordered, input=identity.input)


__all__ = ["RunSummary", "StoredRun", "stored_run", "summarise"]
