"""Learned quality estimators and routing: FrugalGPT scorers, pre-generation gates, cascade routing.

- :class:`QualityEstimator`: per model, P(correct | query) before it runs and
  P(correct | query, answer, earlier answers) after; trained from a replay log, updated
  online, saved next to a cascade file.
- Rules (they serialize in cascade files): ``scorer`` (:class:`ScorerThreshold`),
  ``exante_gate`` (:class:`ExAnteGate`, a stage's ``gate``), ``cascade_route``
  (:class:`CascadeRoute`).
- :func:`fit_cascade_routing`: cascade routing with λ set for a quality target or budget.
"""

from tiered.calibrate.learned.estimator import QualityEstimator
from tiered.calibrate.learned.features import FeatureSpec
from tiered.calibrate.learned.fit import RoutingFit, fit_cascade_routing, routing_spec
from tiered.calibrate.learned.policy import LambdaFit, Replayer, Router, fit_lambda, route_values
from tiered.calibrate.learned.rules import CascadeRoute, ExAnteGate, ScorerThreshold, load_estimator

__all__ = [
    "CascadeRoute",
    "ExAnteGate",
    "FeatureSpec",
    "LambdaFit",
    "QualityEstimator",
    "Replayer",
    "Router",
    "RoutingFit",
    "ScorerThreshold",
    "fit_cascade_routing",
    "fit_lambda",
    "load_estimator",
    "route_values",
    "routing_spec",
]
