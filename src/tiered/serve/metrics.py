"""Prometheus metrics of one gateway (its own registry, so several can live in one process).

| metric | labels | meaning |
| --- | --- | --- |
| ``tiered_requests_total`` | endpoint, status | HTTP requests answered |
| ``tiered_request_duration_seconds`` | endpoint | time to the last byte (histogram) |
| ``tiered_in_flight_requests`` | | requests running a cascade now |
| ``tiered_stage_answers_total`` | cascade, stage | items the stage answered |
| ``tiered_stage_deferrals_total`` | cascade, stage | items the stage passed on |
| ``tiered_stage_cost_usd_total`` | cascade, stage | USD paid to the stage |
| ``tiered_upstream_duration_seconds`` | cascade, stage | one stage call (histogram) |
| ``tiered_upstream_errors_total`` | cascade, stage, error | failed stage calls |
| ``tiered_budget_spent_usd_total`` | key | USD settled against each key |
| ``tiered_agreement_cs_low`` | cascade | online: agreement's lower bound (anytime-valid) |
| ``tiered_agreement_cs_high`` | cascade | online: agreement's upper bound (anytime-valid) |
| ``tiered_agreement_below_target`` | cascade | online: 1 while the upper bound < target |
| ``tiered_agreement_alarms_total`` | cascade | online: times the upper bound fell below |

The online cascades' alarm count includes the alarms of a restored learner's past.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from tiered.core.cascade import CascadeResult

M = TypeVar("M", bound=MetricWrapperBase)

# request latency: sub-ms gateway paths up to LLM calls that take a minute
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/classify",
        "/health",
        "/metrics",
    }
)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tiered_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "tiered_request_duration_seconds",
            "Time from request to last response byte",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "tiered_in_flight_requests", "Requests running a cascade", registry=r
        )
        self.stage_answers = Counter(
            "tiered_stage_answers", "Items a stage answered", ["cascade", "stage"], registry=r
        )
        self.stage_deferrals = Counter(
            "tiered_stage_deferrals", "Items a stage passed on", ["cascade", "stage"], registry=r
        )
        self.stage_cost = Counter(
            "tiered_stage_cost_usd", "USD paid to a stage", ["cascade", "stage"], registry=r
        )
        self.upstream_seconds = Histogram(
            "tiered_upstream_duration_seconds",
            "Duration of one stage call",
            ["cascade", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "tiered_upstream_errors",
            "Stage calls that failed",
            ["cascade", "stage", "error"],
            registry=r,
        )
        self.budget_spent = Counter(
            "tiered_budget_spent_usd", "USD settled against a key", ["key"], registry=r
        )
        self.cs_low = Gauge(
            "tiered_agreement_cs_low",
            "Lower end of the agreement's confidence sequence (valid at every item)",
            ["cascade"],
            registry=r,
        )
        self.cs_high = Gauge(
            "tiered_agreement_cs_high",
            "Upper end of the agreement's confidence sequence (valid at every item)",
            ["cascade"],
            registry=r,
        )
        self.below_target = Gauge(
            "tiered_agreement_below_target",
            "1 while the agreement's upper bound is below the target (alarm raised)",
            ["cascade"],
            registry=r,
        )
        self.alarms = Counter(
            "tiered_agreement_alarms",
            "Times the agreement's upper bound fell below the target",
            ["cascade"],
            registry=r,
        )
        self._alarms_seen: dict[str, int] = {}
        # label lookups cost microseconds each; hot paths reuse the children
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, looked up once."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        if path in ENDPOINTS:
            endpoint = path
        elif path.startswith("/v1/models/"):
            endpoint = "/v1/models/{model}"  # one label, whatever the model name
        else:
            endpoint = "other"
        self._child(self.requests, endpoint, str(status)).inc()
        self._child(self.request_seconds, endpoint).observe(seconds)

    def observe_result(self, cascade: str, result: CascadeResult) -> None:
        """Per-stage answers and deferrals of one cascade run."""
        for step in result.steps:
            n_acc = int(np.count_nonzero(step.accepted))
            n_def = len(step.accepted) - n_acc
            if n_acc:
                self._child(self.stage_answers, cascade, step.stage).inc(n_acc)
            if n_def:
                self._child(self.stage_deferrals, cascade, step.stage).inc(n_def)

    def observe_answers(self, cascade: str, stages: list[str], answered_by: list[int]) -> None:
        """Answers and deferrals when only who answered is known (online cascades)."""
        counts = [0] * len(stages)
        for k in answered_by:
            counts[k] += 1
        reached = len(answered_by)
        for name, c in zip(stages, counts, strict=True):
            if c:
                self.stage_answers.labels(cascade, name).inc(c)
            reached -= c
            if reached > 0 and name != stages[-1]:
                self.stage_deferrals.labels(cascade, name).inc(reached)

    def observe_bounds(
        self, cascade: str, cs_low: float, cs_high: float, below_target: bool, alarms: int
    ) -> None:
        """An online cascade's agreement bounds now; ``alarms``: its learner's total so far."""
        self.cs_low.labels(cascade).set(cs_low)
        self.cs_high.labels(cascade).set(cs_high)
        self.below_target.labels(cascade).set(1.0 if below_target else 0.0)
        counter = self.alarms.labels(cascade)  # exposed at 0 before the first alarm
        new = alarms - self._alarms_seen.get(cascade, 0)
        if new > 0:
            counter.inc(new)
            self._alarms_seen[cascade] = alarms

    def observe_cost(self, cascade: str, stage: str, usd: float) -> None:
        self._child(self.stage_cost, cascade, stage).inc(usd)

    def observe_call(self, cascade: str, stage: str, seconds: float, error: str | None) -> None:
        self._child(self.upstream_seconds, cascade, stage).observe(seconds)
        if error is not None:
            self.upstream_errors.labels(cascade, stage, error).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ENDPOINTS", "GatewayMetrics"]
