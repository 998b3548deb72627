"""Evaluation: metrics of a cascade on a replay log, the oracle bound, JSON and plots."""

from tiered.eval.metrics import (
    EvalReport,
    ModelPoint,
    OracleBound,
    check_signals,
    evaluate,
    evaluate_cascade,
    oracle_bound,
    single_models,
    top_model,
)
from tiered.eval.plot import plot_cost_quality

__all__ = [
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
]
