"""What a run counts (over all its sessions) and what it reads from the learner.

:class:`RunCounters` is saved with every checkpoint (as JSON), so a resumed run counts
from the start; :class:`LearnerStats` is the learner's state of the stream as plain
numbers, for history rows, the progress bar and the summary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from tiered.errors import StoreError

if TYPE_CHECKING:
    from tiered.online import OnlineStats


@dataclass(slots=True)
class RunCounters:
    """Running totals of a run; ``truth_*`` count agreement with a free expert column."""

    records: int = 0
    items: int = 0
    rejects: int = 0
    wall_s: float = 0.0
    stage_counts: dict[str, int] = field(default_factory=dict)
    gold_n: int = 0
    gold_correct: int = 0
    expert_gold_n: int = 0
    expert_gold_correct: int = 0
    truth_n: int = 0
    truth_agree: int = 0
    replay_records: int = 0
    sessions: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunCounters:
        """Counters as saved in a checkpoint (a key this version lacks keeps its default)."""
        out = cls()
        try:
            for f in fields(cls):
                if f.name not in data:
                    continue
                value = data[f.name]
                if f.name == "stage_counts":
                    out.stage_counts = {str(k): int(v) for k, v in dict(value).items()}
                elif f.name == "wall_s":
                    out.wall_s = float(value)
                else:
                    setattr(out, f.name, int(value))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the saved counters are unreadable ({exc}); pass --fresh") from exc
        return out

    def count_stages(self, stages: Iterable[str]) -> None:
        sc = self.stage_counts
        for s in stages:
            sc[s] = sc.get(s, 0) + 1

    def count_quality(
        self,
        labels: Sequence[str | None],
        gold: Sequence[str | None],
        truth: Sequence[str | None] | None,
    ) -> None:
        """Agreement with gold labels (and of the expert's column with gold), and with the
        expert's column on every item when it is free to read."""
        for i, g in enumerate(gold):
            if g is not None:
                self.gold_n += 1
                self.gold_correct += int(labels[i] == g)
                if truth is not None and truth[i] is not None:
                    self.expert_gold_n += 1
                    self.expert_gold_correct += int(truth[i] == g)
        if truth is not None:
            for lab, t in zip(labels, truth, strict=True):
                if t is not None:
                    self.truth_n += 1
                    self.truth_agree += int(lab == t)

    @staticmethod
    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@dataclass(frozen=True, slots=True)
class LearnerStats:
    """The learner's stats as plain numbers (None for NaN: nothing to estimate yet).

    ``cs_low``/``cs_high`` bound the overall agreement at every item at once (each end
    with probability >= ``confidence``); ``below_target``: ``cs_high`` is below the target
    now; ``alarms``: how often that began, ``first_alarm_at``: after how many items.
    Defaults: a store written before the bounds were tracked.
    """

    n_items: int
    expert_calls: int
    audits: int
    agreement: float | None
    ci_low: float | None
    ci_high: float | None
    usd_spent: float
    usd_expert_only: float
    window_agreement: float | None
    window_ci_low: float | None
    window_ci_high: float | None
    window_expert_share: float | None
    threshold: float | None
    cs_low: float | None = None
    cs_high: float | None = None
    below_target: bool = False
    alarms: int = 0
    first_alarm_at: int | None = None
    confidence: float | None = None

    @classmethod
    def read(cls, stats: OnlineStats) -> LearnerStats:
        return cls(
            n_items=stats.n_items,
            expert_calls=stats.expert_calls,
            audits=stats.audits,
            agreement=_num(stats.audited_agreement),
            ci_low=_num(stats.ci_low),
            ci_high=_num(stats.ci_high),
            usd_spent=float(stats.usd_spent),
            usd_expert_only=float(stats.usd_expert_only),
            window_agreement=_num(stats.window_agreement),
            window_ci_low=_num(stats.window_ci_low),
            window_ci_high=_num(stats.window_ci_high),
            window_expert_share=_num(stats.window_expert_share),
            threshold=_num(min(stats.thresholds.values(), default=None)),
            cs_low=_num(stats.cs_low),
            cs_high=_num(stats.cs_high),
            below_target=bool(stats.below_target),
            alarms=int(stats.alarms),
            first_alarm_at=stats.first_alarm_at,
            confidence=_num(stats.confidence),
        )


def history_row(
    counters: RunCounters, stats: LearnerStats, wall_s: float, target: float | None
) -> dict[str, Any]:
    """One row of the run's history (plots over time in the report)."""
    return {
        "n": counters.items,
        "records": counters.records,
        "rejects": counters.rejects,
        "wall_s": round(wall_s, 3),
        **asdict(stats),
        "target": target,
        "stage_counts": dict(counters.stage_counts),
        "gold_n": counters.gold_n,
        "gold_correct": counters.gold_correct,
        "truth_n": counters.truth_n,
        "truth_agree": counters.truth_agree,
    }


__all__ = ["LearnerStats", "RunCounters", "history_row"]
