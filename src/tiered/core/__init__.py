"""The cascade engine: items, answers, signals, rules, costs, stages and cascades."""

from tiered.core.answers import AnswerBatch
from tiered.core.cascade import Cascade, CascadeResult, Decision, Stage, StageStep, StepTrace
from tiered.core.costs import CostModel, FixedCost, LatencyCost, RecordedCost, TokenCost, parse_cost
from tiered.core.items import Item, as_items
from tiered.core.model import AsyncModel, LearnableModel, Model, ModelTags
from tiered.core.rules import (
    Agreement,
    AllOf,
    Always,
    AnyOf,
    DeferralRule,
    Never,
    Not,
    RuleContext,
    Threshold,
    Vote,
    Window,
    parse_rule,
)
from tiered.core.spec import (
    BuildContext,
    CascadeSpec,
    StageSpec,
    build_model,
    load_cascade,
    register_model,
)

__all__ = [
    "Agreement",
    "AllOf",
    "Always",
    "AnswerBatch",
    "AnyOf",
    "AsyncModel",
    "BuildContext",
    "Cascade",
    "CascadeResult",
    "CascadeSpec",
    "CostModel",
    "Decision",
    "DeferralRule",
    "FixedCost",
    "Item",
    "LatencyCost",
    "LearnableModel",
    "Model",
    "ModelTags",
    "Never",
    "Not",
    "RecordedCost",
    "RuleContext",
    "Stage",
    "StageSpec",
    "StageStep",
    "StepTrace",
    "Threshold",
    "TokenCost",
    "Vote",
    "Window",
    "as_items",
    "build_model",
    "load_cascade",
    "parse_cost",
    "parse_rule",
    "register_model",
]
