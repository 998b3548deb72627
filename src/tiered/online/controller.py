"""Threshold control: which P(correct) a cheap stage needs before it may answer.

Every cheap stage answers an item when its deferral head's P(agrees with the expert) is
at least the threshold ``t`` (shared by the stages: the heads are calibrated, so one
``t`` means the same for each). Deferring the items of lowest P(correct) first is the
cheapest way to buy agreement, and one ``t`` held over the whole stream spends expert
calls where each buys the most, which is why the controller moves a single number.

**With ``mu``** (OCL's cost coefficient): ``t = 1 - mu``, fixed.

**With ``target_agreement``** the controller holds the *overall* agreement of the stream
(see :mod:`tiered.online.audit`) at the target, in two parts:

1. *Feedback.* From a statistic ``S`` of the overall agreement after ``n`` items, the
   agreement the next ``H = max(window, horizon * n)`` items need so ``S`` is back on
   target is ``A = target + (target - S) * n / H``, clipped to
   ``[target - max_slack, 1]``: a surplus (the warm-up agrees perfectly) is spent
   slowly, a shortfall made up. When the *window's* whole confidence interval is below
   the target (a distribution shift), ``A`` is raised to make up the window's shortfall
   over the next window.
2. *Feed-forward.* The current heads rescore the features of the last ``window`` items
   (a head's scale drifts as its stage learns), which predicts the agreement any
   candidate ``t`` gives: an item accepted by stage k agrees with probability
   ``audit_rate + (1 - audit_rate) * p_k`` (an audited one outputs the expert's label),
   a deferred one agrees for sure. Scores ``p_k`` are corrected by the heads' recent mean
   audited residual (audited outcome of the cheap label minus predicted P(correct),
   shrunk towards 0 with a prior of 100 audits). The controller picks the smallest ``t``
   whose prediction reaches ``A``.

**Which statistic** (``control``):

- ``anytime`` (the default): the lower end of the agreement's *confidence sequence*
  (:mod:`tiered.online.confseq`), which holds at every item at once with probability
  >= ``confidence`` however often it is looked at. Holding it at the target is what makes
  the target a promise: wherever the bound is at or above the target, so is the true
  agreement (on that probability). Each disagreement still to come moves the bound by
  more than one (``bound_inflation``: it was not audited, and the bound must allow for
  the ones the audits miss), so ``A`` is translated into the agreement the coming items
  need for the *bound* to move as asked. The factor is the bound's growth averaged over
  the audited disagreements the next ``H`` items should bring, not its growth at the
  next one: the bound's excess over the estimate grows like their square root, so the
  next one alone overstates what the ``H`` items will cost (HEADLINES, target 0.90, 20
  seeds: 23.0% expert calls instead of 23.9%). The audit rate defaults to 0.1 here: the
  bound narrows with the audited disagreements, which costs fewer expert calls than the
  width would. As the feedback is gradual, the bound closes in on the target from below.
- ``estimate``: the audited point estimate, its correction shrunk by ``m / (m + 100)``
  while there are few (``m``) audits. The true agreement then lands within the
  estimate's noise of the target, on either side (HEADLINES, target 0.96, 5% audits,
  10 seeds: true 0.948-0.976).
- ``lower_bound``: the lower end of the fixed-sample confidence interval. Safer than the
  estimate, but the interval is looked at after every batch, which its 95% does not
  allow for: it still ended below 0.96 on some HEADLINES seeds.

**Alarm.** Whatever the control, when the sequence's *upper* end falls below the target
the true agreement is below it (with that probability): a warning is logged, ``alarms``
counts it, and with ``escalate`` the threshold becomes :data:`ESCALATED`, so every item
goes to the expert until the upper end is back at or above the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tiered.online.audit import AgreementEstimate
from tiered.online.config import OnlineConfig
from tiered.online.confseq import AgreementBounds, agreement_bounds, bound_inflation
from tiered.online.head import N_FEATURES

Scorer = Callable[[np.ndarray], np.ndarray]

_GRID = 256
_PRIOR_AUDITS = 100.0
_PRIOR_FEEDBACK = 100.0
_log = logging.getLogger("tiered.online")
# The threshold while escalated: above any P(correct), so every item goes to the expert.
ESCALATED = 2.0


class ThresholdController:
    """Holds the acceptance threshold and what it is computed from."""

    def __init__(self, config: OnlineConfig, n_cheap: int, n_features: int = N_FEATURES) -> None:
        self.config = config
        self.n_cheap = n_cheap
        self.window = config.window
        # Head features of the recent items (NaN rows: the stage did not run or answer);
        # rescored with the current heads, since a head's scale drifts as its stage learns.
        self.features = np.full((self.window, n_cheap, n_features), np.nan)
        self.pos = 0
        self.size = 0
        # Audited residuals (outcome - predicted P(correct)), exponentially forgotten.
        self.resid_sum = 0.0
        self.resid_n = 0.0
        self.required = math.nan
        # The confidence sequence (valid at every item) and the below-target alarm.
        self.bounds: AgreementBounds | None = None
        self.escalated = False  # the upper bound is below the target right now
        self.alarms = 0  # times the alarm was raised
        self.first_alarm_at: int | None = None  # items seen when it was first raised
        if config.target_agreement is None:
            self.threshold = float(np.clip(1.0 - config.effective_mu, 0.0, 1.0))
        else:
            self.threshold = config.max_threshold
        lo, hi = config.min_threshold, config.max_threshold
        z = np.linspace(_logit(lo), _logit(hi), _GRID)
        self.grid = 1.0 / (1.0 + np.exp(-z))

    @property
    def targeted(self) -> bool:
        return self.config.target_agreement is not None

    def observe(self, features: np.ndarray) -> None:
        """Remember head features ``(n, n_cheap, d)`` of a batch (NaN: no answer)."""
        features = features[-self.window :]
        idx = (self.pos + np.arange(len(features))) % self.window
        self.features[idx] = features
        self.pos = int((self.pos + len(features)) % self.window)
        self.size = min(self.window, self.size + len(features))

    def observe_audits(self, predicted: np.ndarray, agreed: np.ndarray) -> None:
        """Audited items: the answering head's P(correct) and whether the expert agreed."""
        if len(predicted) == 0:
            return
        forget = 0.5 ** (len(predicted) / max(2 * self.window * self.config.audit_rate, 1.0))
        self.resid_sum = self.resid_sum * forget + float((agreed - predicted).sum())
        self.resid_n = self.resid_n * forget + len(predicted)

    @property
    def correction(self) -> float:
        """Mean audited residual, shrunk towards 0 while audits are few."""
        return self.resid_sum / (self.resid_n + _PRIOR_AUDITS)

    def recent_scores(self, scorers: Sequence[Scorer]) -> np.ndarray:
        """P(correct) of the recent items under the current scorers, ``(size, n_cheap)``."""
        f = self.features[: self.size]
        out = np.full((self.size, self.n_cheap), np.nan)
        for k, score in enumerate(scorers):
            ok = ~np.isnan(f[:, k, 0])
            out[ok, k] = score(f[ok, k])
        return out

    def predicted_agreement(self, scorers: Sequence[Scorer]) -> np.ndarray:
        """Predicted agreement of the recent items for every threshold on the grid.

        An item's agreement as a function of ``t`` is a step function: stage 1's value
        while ``t <= s_1``, then the value of the first later stage whose score beats
        every earlier one, and 1 (the expert) above them all. The steps of all items are
        summed on the grid with one ``bincount`` per stage.
        """
        if self.size == 0:
            return np.ones(_GRID)
        s = np.nan_to_num(self.recent_scores(scorers), nan=-1.0)
        value = np.clip(s + self.correction, 0.0, 1.0)
        # An accepted item is audited (and outputs the expert's label) with audit_rate.
        a = self.config.audit_rate
        value = a + (1.0 - a) * value
        n = len(s)
        base = float(value[:, 0].sum())
        delta = np.zeros(_GRID + 1)
        current = value[:, 0].copy()
        reach = s[:, 0].copy()  # above this t, no stage so far answers
        for k in range(1, self.n_cheap):
            later = s[:, k] > reach
            at = np.searchsorted(self.grid, reach[later], side="right")
            delta += np.bincount(at, weights=value[later, k] - current[later], minlength=_GRID + 1)
            current[later] = value[later, k]
            reach[later] = s[later, k]
        at = np.searchsorted(self.grid, reach, side="right")
        delta += np.bincount(at, weights=1.0 - current, minlength=_GRID + 1)
        return (base + np.cumsum(delta)[:_GRID]) / n

    def update(
        self,
        overall: AgreementEstimate,
        scorers: Sequence[Scorer],
        window: AgreementEstimate | None = None,
    ) -> float:
        """New threshold after a batch, given the audited estimates (overall, window).

        ``scorers[k]`` maps stage k's head features to its P(correct) (its head's
        ``predict``).
        """
        if not self.targeted:
            return self.threshold
        target = float(self.config.target_agreement)  # type: ignore[arg-type]
        n = overall.n
        bounds = self._watch(overall, target)
        if self.escalated and self.config.escalate:
            self.required = 1.0
            self.threshold = ESCALATED  # no cheap stage may answer: every item to the expert
            return self.threshold
        if self.config.control == "anytime":
            # the bound allows for the noise, at every item: no shrinking either
            stat, trust = bounds.low - self.config.anytime_margin, 1.0
        elif self.config.control == "lower_bound":
            stat, trust = overall.low, 1.0  # the bound already allows for the noise
        else:
            # Few audits make a noisy estimate: shrink the correction towards none.
            stat = overall.agreement
            trust = overall.audits / (overall.audits + _PRIOR_FEEDBACK)
        if math.isnan(stat) or n == 0:
            stat = target
        horizon = max(self.window, n * self.config.horizon)
        required = target + (target - stat) * n / horizon * trust
        if self.config.control == "anytime":
            # Where the *bound* must go, in agreement the coming items need: each of their
            # disagreements moves the bound by more than one (``bound_inflation``).
            # Averaged over the audited disagreements the horizon should bring (near the
            # target): the bound grows less per disagreement as they pile up.
            k = overall.audits - overall.audits_agreeing
            a = self.config.audit_rate
            ahead = a * horizon * (1.0 - target)
            grow = bound_inflation(k, a, 1.0 - self.config.confidence, ahead)
            required = 1.0 - (1.0 - required) / grow
        if window is not None and window.high < target:
            # The recent stream is significantly below target (a shift): make it up now
            # rather than at the slow pace of the overall estimate.
            required = max(required, target + (target - window.agreement))
        required = float(np.clip(required, target - self.config.max_slack, 1.0))
        self.required = required
        pred = self.predicted_agreement(scorers)
        ok = np.flatnonzero(pred >= required)
        self.threshold = float(self.grid[ok[0]] if len(ok) else self.grid[-1])
        return self.threshold

    def _watch(self, overall: AgreementEstimate, target: float) -> AgreementBounds:
        """Update the confidence sequence; raise or clear the below-target alarm."""
        cfg = self.config
        bounds = agreement_bounds(
            overall.n,
            overall.cheap_answered,
            overall.audits,
            overall.audits_agreeing,
            cfg.audit_rate,
            1.0 - cfg.confidence,
        )
        self.bounds = bounds
        below = bounds.high < target
        if below and not self.escalated:
            self.alarms += 1
            if self.first_alarm_at is None:
                self.first_alarm_at = overall.n
            then = "every item goes to the expert until it recovers" if cfg.escalate else ""
            _log.warning(
                "agreement below target after %d items: its upper confidence bound %.4f "
                "< target %.4f (%.0f%% confidence, valid at every item)%s",
                overall.n, bounds.high, target, 100 * cfg.confidence,
                f"; {then}" if then else "",
            )  # fmt: skip
        elif self.escalated and not below:
            _log.warning(
                "agreement back in reach of the target after %d items (upper bound %.4f)",
                overall.n,
                bounds.high,
            )
        self.escalated = below
        return bounds

    def state_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.copy(),
            "pos": self.pos,
            "size": self.size,
            "resid_sum": self.resid_sum,
            "resid_n": self.resid_n,
            "required": self.required,
            "threshold": self.threshold,
            "escalated": self.escalated,
            "alarms": self.alarms,
            "first_alarm_at": self.first_alarm_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.features = np.array(state["features"], dtype=float)
        self.pos = int(state["pos"])
        self.size = int(state["size"])
        self.resid_sum = float(state["resid_sum"])
        self.resid_n = float(state["resid_n"])
        self.required = float(state["required"])
        self.threshold = float(state["threshold"])
        # the alarm (absent from states saved before it existed); its bounds are
        # recomputed after the next batch
        self.escalated = bool(state.get("escalated", False))
        self.alarms = int(state.get("alarms", 0))
        first = state.get("first_alarm_at")
        self.first_alarm_at = None if first is None else int(first)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


__all__ = ["ESCALATED", "ThresholdController"]
