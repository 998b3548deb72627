"""Agreement with the expert: what the stream achieved, estimated from audits.

**Definition.** An item *agrees* when the label the cascade output equals the label the
expert gives (or would give) for it. Items whose output is the expert's label agree
by definition: the ones it answered (deferred, warm-up, exploration) and the
**audited** ones. Every item a cheap stage accepts is, with the same probability
``audit_rate``, also sent to the expert; its output becomes the expert's label, and the
audit records whether the cheap label agreed with it. Over a set of ``n`` items, with
``expert_answered`` counting the audited items too and ``cheap_answered`` the cheap
answers that were output (the unaudited ones),

    agreement = (expert_answered + cheap_answered_that_agree) / n.

The first term is known. The second is estimated from the audits: they are a uniform
random sample of the cheap-accepted items (each is drawn with the same probability,
independently of its content), so the agreement rate of ``k`` agreeing out of ``m``
audits is an unbiased estimate of the rate among the unaudited cheap answers, ``k`` is
binomial, and a Wilson or Clopper–Pearson interval ``[lo, hi]`` for the cheap stages'
rate maps to an interval for the overall agreement:

    [(expert_answered + cheap_answered * lo) / n,  (expert_answered + cheap_answered * hi) / n].

An audit for which the expert gave no label is not counted: its item keeps the cheap
label and counts as an unaudited cheap answer.

Exploration items (sent up with a rate that decays over the stream) are *not* counted
as audits: their sampling rate changes with time, so pooling them would over-weight the
early stream. They are answered by the expert and count as expert-answered.

The meter keeps these counts both overall and over a sliding window of recent items.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tiered.online.intervals import CIMethod, binomial_interval


@dataclass(frozen=True, slots=True)
class AgreementEstimate:
    """Agreement over a set of items, from audits (see the module docstring).

    ``expert_answered`` counts the items whose output is the expert's label (audited
    ones included), ``cheap_answered`` the cheap answers that were output (unaudited).
    ``agreement`` is NaN when cheap stages answered items but none was audited yet.
    ``cheap_agreement`` (with ``cheap_low``/``cheap_high``) is the cheap stages'
    agreement rate over the audits.
    """

    n: int
    expert_answered: int
    cheap_answered: int
    audits: int
    audits_agreeing: int
    agreement: float
    low: float
    high: float
    cheap_agreement: float
    cheap_low: float
    cheap_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_agreement(
    n_expert: int,
    n_cheap: int,
    audits: int,
    agreeing: int,
    *,
    confidence: float,
    method: CIMethod,
) -> AgreementEstimate:
    """Combine the known expert outputs (``n_expert``, audited items included) with the
    audited rate (``agreeing`` of ``audits``) applied to the ``n_cheap`` cheap outputs."""
    n = n_expert + n_cheap
    lo_c, hi_c = binomial_interval(agreeing, audits, confidence, method)
    rate = agreeing / audits if audits else math.nan
    if n == 0:
        agreement, lo, hi = math.nan, 0.0, 1.0
    elif n_cheap == 0:
        agreement, lo, hi = 1.0, 1.0, 1.0
    else:
        agreement = (n_expert + n_cheap * rate) / n if audits else math.nan
        lo = (n_expert + n_cheap * lo_c) / n
        hi = (n_expert + n_cheap * hi_c) / n
    return AgreementEstimate(
        n=n,
        expert_answered=n_expert,
        cheap_answered=n_cheap,
        audits=audits,
        audits_agreeing=agreeing,
        agreement=agreement,
        low=lo,
        high=hi,
        cheap_agreement=rate,
        cheap_low=lo_c,
        cheap_high=hi_c,
    )


class AgreementMeter:
    """Counts per item, overall and over the last ``window`` items.

    ``stage`` is the index of the stage whose label was output (an audited item counts
    under the expert, the last index); ``audited``/``agree`` say whether an audit
    counted and whether the *cheap* label agreed with the expert's.
    """

    def __init__(self, n_stages: int, window: int) -> None:
        self.n_stages = n_stages  # cheap stages + the expert (the last index)
        self.window = window
        self.stage = np.zeros(window, dtype=np.int16)
        self.audited = np.zeros(window, dtype=bool)
        self.agree = np.zeros(window, dtype=bool)
        self.called = np.zeros(window, dtype=bool)
        self.pos = 0
        self.size = 0
        self.total_stage = np.zeros(n_stages, dtype=np.int64)
        self.total_audits = 0
        self.total_agree = 0
        self.total_called = 0

    def add(
        self, stage: np.ndarray, audited: np.ndarray, agree: np.ndarray, called: np.ndarray
    ) -> None:
        """Record a batch: output stage index, audit flags and outcomes, expert calls."""
        self.total_stage += np.bincount(stage, minlength=self.n_stages)
        self.total_audits += int(audited.sum())
        self.total_agree += int((audited & agree).sum())
        self.total_called += int(called.sum())
        keep = slice(-self.window, None)
        stage, audited, agree, called = stage[keep], audited[keep], agree[keep], called[keep]
        idx = (self.pos + np.arange(len(stage))) % self.window
        self.stage[idx] = stage
        self.audited[idx] = audited
        self.agree[idx] = agree & audited
        self.called[idx] = called
        self.pos = int((self.pos + len(stage)) % self.window)
        self.size = min(self.window, self.size + len(stage))

    @property
    def n(self) -> int:
        return int(self.total_stage.sum())

    def cumulative(self, confidence: float, method: CIMethod) -> AgreementEstimate:
        n_expert = int(self.total_stage[-1])
        return estimate_agreement(
            n_expert,
            self.n - n_expert,
            self.total_audits,
            self.total_agree,
            confidence=confidence,
            method=method,
        )

    def windowed(self, confidence: float, method: CIMethod) -> AgreementEstimate:
        s = slice(0, self.size)
        n_expert = int((self.stage[s] == self.n_stages - 1).sum())
        return estimate_agreement(
            n_expert,
            self.size - n_expert,
            int(self.audited[s].sum()),
            int(self.agree[s].sum()),
            confidence=confidence,
            method=method,
        )

    def window_stage_share(self) -> np.ndarray:
        counts = np.bincount(self.stage[: self.size], minlength=self.n_stages)
        return counts / max(self.size, 1)

    def window_expert_share(self) -> float:
        """Share of recent items for which the expert was called (answers and audits)."""
        return float(self.called[: self.size].mean()) if self.size else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            k: (v.copy() if isinstance(v, np.ndarray) else v)
            for k, v in vars(self).items()
            if k not in ("n_stages", "window")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The format is unchanged since audited items output the expert's label. A state
        # from before counts its audited items under the cheap stage that answered them,
        # which is right for those items: their output was the cheap label.
        for k, v in state.items():
            setattr(self, k, v.copy() if isinstance(v, np.ndarray) else v)


__all__ = ["AgreementEstimate", "AgreementMeter", "estimate_agreement"]
