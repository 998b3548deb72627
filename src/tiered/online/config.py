"""Settings of online cascade learning (:class:`OnlineConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tiered.online.intervals import CIMethod

ANYTIME_AUDIT_RATE = 0.1


class OnlineConfig(BaseModel):
    """How an :class:`~tiered.online.OnlineCascade` learns, defers, explores and audits.

    Deferral is steered by exactly one of:

    - ``target_agreement`` (e.g. 0.96): a controller moves the acceptance threshold so the
      stream's *overall agreement with the expert* stays at or above the target with as
      few expert calls as it can (see :mod:`tiered.online.controller`);
    - ``mu``: OCL's cost coefficient, the price of one expert call counted in errors. A
      cheap stage answers when its expected error ``1 - P(correct)`` is at most ``mu``;
      the threshold is fixed (``1 - mu``). Used when ``target_agreement`` is not set;
      when neither is set, ``mu`` = 0.1.
    """

    model_config = ConfigDict(extra="forbid")

    # Pacing.
    warmup: int = Field(default=200, ge=0, description="first items that all go to the expert")
    batch_size: int = Field(default=256, ge=1, description="items per internal batch")
    refit_every: int = Field(
        default=32, ge=1, description="new expert labels that trigger a refit of the stages"
    )
    replay_size: int = Field(default=5000, ge=1, description="labelled items kept for replay")
    replay_ratio: float = Field(
        default=2.0, ge=0, description="replayed items per new label at each refit"
    )

    # What decides deferral.
    target_agreement: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="agreement with the expert to hold over the stream, e.g. 0.96",
    )
    mu: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="without a target: a cheap stage answers when its expected error is <= mu",
    )
    deferral_signal: Literal["head", "max_prob"] = Field(
        default="head",
        description="what the threshold applies to: the learned deferral head's P(correct), "
        "or the stage's raw top probability (the fixed-threshold baseline)",
    )
    control: Literal["anytime", "estimate", "lower_bound"] = Field(
        default="anytime",
        description="statistic the controller holds at the target: the lower end of the "
        "agreement's confidence sequence, valid at every item (the default: the true "
        "agreement stays >= target with probability >= confidence), the point estimate, "
        "or the lower end of the fixed-sample confidence interval",
    )
    anytime_margin: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="control 'anytime': extra agreement the lower confidence bound is held at",
    )
    escalate: bool = Field(
        default=True,
        description="when the confidence sequence's upper end falls below the target, send "
        "every item to the expert until it is back at or above the target",
    )
    max_slack: float = Field(
        default=0.02,
        ge=0,
        lt=1,
        description="how far below the target the next items may go to spend a surplus",
    )
    horizon: float = Field(
        default=1.0,
        gt=0,
        description="a shortfall after n items is made up over the next horizon * n items",
    )
    min_threshold: float = Field(
        default=0.5, ge=0, lt=1, description="lowest acceptance threshold the controller sets"
    )
    max_threshold: float = Field(
        default=0.999, gt=0, le=1, description="highest acceptance threshold the controller sets"
    )
    max_expert_share: float | None = Field(
        default=None, gt=0, le=1, description="cap on the cumulative share of expert calls"
    )

    # Labels that keep flowing, and the quality estimate.
    audit_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="share of cheap answers also sent to the expert, to measure agreement; "
        "when not set, 0.1 with control 'anytime' (its bound is narrower for it) and 0.05 "
        "otherwise",
    )
    exploration_beta: float = Field(
        default=0.995, ge=0, lt=1, description="item n is sent up anyway with probability beta**n"
    )
    exploration_min: float = Field(default=0.0, ge=0, le=1, description="floor of that rate")
    confidence: float = Field(
        default=0.95, gt=0, lt=1, description="confidence of the agreement's intervals"
    )
    ci_method: CIMethod = Field(
        default="wilson", description="the binomial interval of the audited agreement rate"
    )
    window: int = Field(default=2000, ge=10, description="items in the sliding window")

    # Deferral heads.
    head_buffer: int = Field(default=4096, ge=16, description="labelled examples per head")
    head_l2: float = Field(default=1.0, ge=0, description="L2 penalty of a deferral head")
    head_halflife: float = Field(
        default=300.0,
        gt=0,
        description="labelled examples over which a head example's weight halves",
    )
    head_min_examples: int = Field(
        default=30, ge=1, description="labelled examples a head needs before it is fitted"
    )
    head_max_weight: float = Field(
        default=10.0, ge=1, description="cap on an example's inverse-propensity weight"
    )
    accuracy_halflife: float = Field(
        default=200.0, gt=0, description="labels over which a stage's recent accuracy halves"
    )

    history_every: int = Field(
        default=0, ge=0, description="items between history rows (0: one row per batch)"
    )
    seed: int = Field(
        default=0, ge=0, description="seed of audits, exploration and replay sampling"
    )

    @model_validator(mode="after")
    def _one_objective(self) -> OnlineConfig:
        if "audit_rate" not in self.model_fields_set and self.control == "anytime":
            # measured on HEADLINES and Rotten Tomatoes: the bound's width costs more expert
            # calls than the extra audits do (0.08-0.12 were within noise of each other)
            self.audit_rate = ANYTIME_AUDIT_RATE
        if self.target_agreement is not None and self.mu is not None:
            raise ValueError("set either target_agreement or mu, not both")
        if self.min_threshold >= self.max_threshold:
            raise ValueError("min_threshold must be below max_threshold")
        return self

    @property
    def effective_mu(self) -> float:
        return 0.1 if self.mu is None else self.mu


__all__ = ["ANYTIME_AUDIT_RATE", "OnlineConfig"]
