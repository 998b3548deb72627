"""The public surface is what we mean it to be: each package's ``__all__`` is pinned here.

A change to a package's exports is a change users see: update the list below on purpose (and
the CHANGELOG), never by accident.
"""

from __future__ import annotations

import importlib

import pytest

SURFACE: dict[str, list[str]] = {
    "tiered": [
        "AnswerBatch",
        "Cascade",
        "CascadeResult",
        "CascadeSpec",
        "ConfigError",
        "DataError",
        "Decision",
        "Item",
        "Stage",
        "TieredError",
        "__version__",
        "load_cascade",
    ],
    "tiered.calibrate": [
        "AgreementFamily",
        "CVReport",
        "Calibration",
        "Candidate",
        "Certificate",
        "CertifiedLabels",
        "CombinedFamily",
        "Config",
        "FrontierPoint",
        "LogView",
        "Objective",
        "Outcome",
        "Point",
        "QualityTarget",
        "RuleFamily",
        "SearchResult",
        "SearchSettings",
        "StageRef",
        "ThresholdFamily",
        "VoteFamily",
        "WindowFamily",
        "calibrate",
        "certify",
        "certify_labels",
        "choose",
        "default_families",
        "evaluate_spec",
        "evaluate_stages",
        "pareto",
        "parse_budget",
        "parse_min_quality",
        "search",
    ],
    "tiered.checks": [
        "CHECKS",
        "RULE_CHECKS",
        "TOY_CLASSES",
        "Check",
        "HasContractCase",
        "ModelCase",
        "check_model",
        "check_rule",
        "check_rule_accept_mask",
        "contract_case",
        "model_checks",
        "model_class",
        "rule_examples",
        "sample_answers",
        "sample_items",
        "toy_items",
    ],
    "tiered.config": [
        "load_yaml",
        "load_yaml_model",
        "validate_yaml",
        "validation_error_to_config_error",
    ],
    "tiered.core": [
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
    ],
    "tiered.eval": [
        "EvalReport",
        "ModelPoint",
        "OracleBound",
        "check_signals",
        "evaluate",
        "evaluate_cascade",
        "oracle_bound",
        "plot_cost_quality",
        "single_models",
        "top_model",
    ],
    "tiered.online": [
        "AccuracyTracker",
        "AgreementEstimate",
        "AgreementMeter",
        "DeferralHead",
        "LabelBuffer",
        "OnlineCascade",
        "OnlineConfig",
        "OnlineDecision",
        "OnlineStats",
        "ThresholdController",
        "binomial_interval",
        "clopper_pearson_interval",
        "estimate_agreement",
        "head_features",
        "wilson_interval",
    ],
    "tiered.replay": [
        "ReplayLog",
        "load_replay",
    ],
    "tiered.runner": [
        "Batch",
        "CertifiedRun",
        "CertifiedSummary",
        "CertifySpec",
        "Checkpointer",
        "DecisionFile",
        "Endpoints",
        "JsonlFile",
        "LearnerStats",
        "ModelWrapper",
        "Opening",
        "Position",
        "QuickOptions",
        "Rejected",
        "Resumed",
        "RichProgress",
        "RunCascade",
        "RunCounters",
        "RunPlan",
        "RunSummary",
        "RunView",
        "SharedLearning",
        "Sink",
        "SinkOpener",
        "Source",
        "StreamRun",
        "build_cascade",
        "file_endpoints",
        "make_plan",
        "parse_certify",
        "plan_endpoints",
        "print_summary",
        "quick_config",
    ],
    "tiered.serve": [
        "Gateway",
        "GatewayConfig",
        "GatewayError",
        "build_app",
        "error_response",
        "load_gateway_config",
        "run_server",
    ],
    "tiered.store": [
        "Checkpoint",
        "RunIdentity",
        "RunStore",
        "connect",
    ],
    "tiered.testing": [
        "FakeUpstream",
        "Reply",
        "Seen",
        "Token",
        "call_first_tool",
        "chat_body",
        "completion_body",
        "fault_for_model",
        "last_text",
        "prompt_text",
        "sentiment_responder",
        "tool_call",
    ],
}

PACKAGES = [
    "tiered.calibrate",
    "tiered.checks",
    "tiered.config",
    "tiered.core",
    "tiered.eval",
    "tiered.online",
    "tiered.replay",
    "tiered.runner",
    "tiered.serve",
    "tiered.store",
    "tiered.testing",
]


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_surface_is_pinned(name: str) -> None:
    assert list(importlib.import_module(name).__all__) == SURFACE[name]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_is_unique_and_importable(name: str) -> None:
    # (ruff's RUF022 keeps each __all__ sorted)
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), f"{name}.__all__ names a thing twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the package does not define: {missing}"


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports_no_private_names(name: str) -> None:
    module = importlib.import_module(name)
    private = [n for n in module.__all__ if n.startswith("_")]
    assert not private, f"{name}.__all__ exports private names: {private}"
