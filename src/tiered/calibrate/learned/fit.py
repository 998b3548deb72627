"""Fit cascade routing on a replay log and write it as a cascade file.

>>> fit = fit_cascade_routing(log, min_quality="top*0.95")     # doctest: +SKIP
>>> fit.save("cascade.yaml")   # and cascade.estimator.json/.npz next to it  # doctest: +SKIP

Every model of the log becomes a stage (cheapest first); each non-final stage gets the
``cascade_route`` rule as its gate and its stop rule, with λ fitted so the objective holds
on the log (replayed with the estimator's cross-fitted estimates, so the numbers are
those of queries it did not train on).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiered.calibrate.learned.estimator import QualityEstimator
from tiered.calibrate.learned.policy import LambdaFit, Replayer, fit_lambda
from tiered.calibrate.learned.rules import CascadeRoute
from tiered.calibrate.objective import Objective, QualityTarget
from tiered.core.spec import CascadeSpec, StageSpec
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog


def routing_spec(
    estimator: QualityEstimator,
    heads: Sequence[str],
    lam: float,
    *,
    lookahead: bool = True,
    name: str = "cascade-routing",
    metadata: dict[str, Any] | None = None,
) -> CascadeSpec:
    """A cascade of replay stages ``heads`` with cascade routing as gate and rule."""
    rule = CascadeRoute(models=list(heads), lam=lam, lookahead=lookahead).with_estimator(estimator)
    stages = []
    for k, h in enumerate(heads):
        last = k == len(heads) - 1
        stages.append(
            StageSpec(name=h, model={"kind": "replay", "model": h})
            if last
            else StageSpec(name=h, model={"kind": "replay", "model": h}, rule=rule, gate=rule)
        )
    return CascadeSpec(name=name, stages=stages, metadata=metadata or {})


@dataclass
class RoutingFit:
    """Cascade routing fitted on a log: the cascade file, its estimator and λ."""

    spec: CascadeSpec
    estimator: QualityEstimator
    heads: list[str]
    fit: LambdaFit
    objective: Objective
    target: float | None
    top_model: str
    top_quality: float
    top_cost: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def relative_cost(self) -> float:
        return self.fit.cost / self.top_cost if self.top_cost > 0 else float("nan")

    def save(self, path: str | Path) -> Path:
        """Write the cascade file and, next to it, ``<stem>.estimator.json`` and ``.npz``."""
        self.spec.save(path)
        return Path(path)


def _resolve(q: QualityTarget | None, top: float) -> float | None:
    return None if q is None else q.resolve(top)


def fit_cascade_routing(
    log: ReplayLog,
    *,
    min_quality: str | float | QualityTarget | None = None,
    budget: float | None = None,
    estimator: QualityEstimator | None = None,
    models: Sequence[str] | None = None,
    lookahead: bool = True,
) -> RoutingFit:
    """Fit (or reuse) a quality estimator and the λ that meets the objective on ``log``.

    ``min_quality``: ``top``, ``top-0.01``, ``top*0.95`` or a number (least cost at that
    quality); ``budget``: USD per item (best quality within it). ``models``: the stages
    (default: every model of the log, cheapest first).
    """
    started = time.perf_counter()
    objective = Objective.make(min_quality, budget)
    if len(log) == 0:
        raise ConfigError("cannot fit cascade routing on an empty log", field="log")
    heads = list(models) if models is not None else list(log.models)
    mean_c = log.mean_cost()
    heads.sort(key=lambda h: mean_c[log.model_index(h)])
    est = estimator if estimator is not None else QualityEstimator().fit(log)
    q = log.mean_quality()
    top = int(np.flatnonzero(q >= q.max() - 1e-12)[np.argmin(mean_c[q >= q.max() - 1e-12])])
    target = _resolve(objective.min_quality, float(q[top]))
    replayer = Replayer(est, log, heads)
    lam = fit_lambda(replayer, target=target, budget=objective.budget, lookahead=lookahead)
    notes = []
    if not lam.feasible:
        notes.append(
            f"no λ meets {objective.describe(target)} on the log: the closest gives quality "
            f"{lam.quality:.4f} at ${lam.cost:.4g}/item"
        )
    metadata: dict[str, Any] = {
        "calibrated_by": "tiered.calibrate.learned.fit_cascade_routing",
        "rule_family": "cascade_route",
        "objective": objective.describe(target),
        "target_quality": target,
        "budget_per_item": objective.budget,
        "fitted_on": log.path,
        "rows": len(log),
        "lambda": lam.lam,
        "expected": {
            "quality": lam.quality,
            "cost_per_item": lam.cost,
            "relative_cost": lam.cost / float(mean_c[top]) if mean_c[top] > 0 else None,
        },
        "top_model": {
            "name": log.models[top],
            "quality": float(q[top]),
            "cost_per_item": float(mean_c[top]),
        },
    }
    if notes:
        metadata["notes"] = notes
    stem = Path(log.path).stem if log.path else "routing"
    spec = routing_spec(
        est, heads, lam.lam, lookahead=lookahead, name=f"{stem}-routing", metadata=metadata
    )
    return RoutingFit(
        spec=spec,
        estimator=est,
        heads=heads,
        fit=lam,
        objective=objective,
        target=target,
        top_model=log.models[top],
        top_quality=float(q[top]),
        top_cost=float(mean_c[top]),
        seconds=time.perf_counter() - started,
        notes=notes,
    )


__all__ = ["RoutingFit", "fit_cascade_routing", "routing_spec"]
