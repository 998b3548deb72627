"""What an online cascade returns: one decision per item, and the running statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class OnlineDecision:
    """The cascade's output for one item.

    - ``label``: the output. ``stage``/``stage_index``: whose label it is; the expert's
      stage name (index = number of cheap stages) when the expert's label is the output:
      deferred, warm-up, exploration and audited items.
    - ``confidence``: the answering cheap stage's P(agrees with the expert) from its
      deferral head; 1.0 when the expert's label is the output (it agrees with itself).
    - ``cost``: USD this item cost: every stage that ran on it, the expert included if it
      was called.
    - ``audited``: a cheap stage answered and the expert was asked too, at random. The
      output is then the expert's label (stage = the expert); ``audited_stage`` and
      ``cheap_label`` hold the cheap stage and the label it gave, which the audit compared
      with the expert's. When the expert returned no label, the cheap label stays the
      output (stage = ``audited_stage``) and the audit does not count.
    - ``expert_label``: the expert's label whenever it was called (None otherwise, or
      when it gave none).
    - ``explored``: sent to the expert by warm-up or exploration.
    - ``audited_stage``/``cheap_label``: set for audited items only (None otherwise).
    """

    id: str
    label: str | None
    stage: str
    stage_index: int
    confidence: float
    cost: float
    audited: bool
    expert_label: str | None
    explored: bool = False
    audited_stage: str | None = None
    cheap_label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class OnlineStats:
    """Where the stream stands. Agreement is defined in :mod:`tiered.online.audit`.

    - ``audited_agreement`` with ``ci_low``/``ci_high``: the estimate of the *overall*
      agreement with the expert (items whose output is the expert's label, audited ones
      included, agree; the unaudited cheap answers are estimated from the audits),
      comparable with the target. NaN while cheap stages answered but nothing was
      audited yet.
    - ``cheap_agreement`` with ``cheap_ci_low``/``cheap_ci_high``: the audited agreement
      rate of the cheap stages' answers (cheap label == expert label over the audits).
    - ``window_*``: the same over the last ``config.window`` items.
    - ``expert_calls``/``expert_share``: calls of the expert (answers, warm-up,
      exploration and audits) over items; ``stage_answers``/``stage_share``: whose label
      was output (audited items count under the expert).
    - ``usd_spent``: what every stage cost so far; ``usd_expert_only``: what the expert
      alone would have cost (its mean price per call times the items).
    - ``cs_low``/``cs_high``: the overall agreement's confidence sequence, valid at every
      item at once (each end with probability >= ``confidence``; see
      :mod:`tiered.online.confseq`). ``below_target``: ``cs_high`` is below the target
      now (the alarm is raised; with ``escalate`` every item goes to the expert);
      ``alarms``: how often it was raised, ``first_alarm_at``: after how many items.
    """

    n_items: int
    expert_calls: int
    expert_share: float
    audits: int
    audited_agreement: float
    ci_low: float
    ci_high: float
    cheap_agreement: float
    cheap_ci_low: float
    cheap_ci_high: float
    window_agreement: float
    window_ci_low: float
    window_ci_high: float
    window_expert_share: float
    usd_spent: float
    usd_expert_only: float
    stage_answers: dict[str, int]
    stage_share: dict[str, float]
    thresholds: dict[str, float]
    target_agreement: float | None
    required_agreement: float
    exploration_rate: float
    explored: int
    labels_learned: int
    refits: int
    confidence: float
    ci_method: str
    # the confidence sequence (valid at every item, see tiered.online.confseq) and alarm
    cs_low: float = 0.0
    cs_high: float = 1.0
    below_target: bool = False
    alarms: int = 0
    first_alarm_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["OnlineDecision", "OnlineStats"]
