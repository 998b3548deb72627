"""Metrics of a cascade run on a replay log, against every single model and the oracle.

Definitions (all means are per query of the evaluated set):

- **quality**: mean quality of the cascade's final answers (``correct`` as 0/1, or
  ``score``). A query whose answering stage lacked a recorded output counts as wrong.
- **cost_per_item**: mean cumulative cost, every stage that ran being paid for.
- **top model**: the single model of highest quality; ties go to the cheaper one.
  ``relative_cost`` = cascade cost / top model cost.
- **oracle bound**: for each query, a router that knows the outcomes calls only the
  cheapest model reaching the best quality any model reaches on that query. A query no
  model gets right (best quality 0) is charged the cheapest recorded model's cost, the
  least one must pay to answer at all. Missing outputs are never the oracle's choice
  unless the query has no recorded output at all.
- **missing_outputs**: queries for which at least one stage that ran had no recorded
  output in the log (that stage's answer counts as wrong and costs its mean cost).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiered.core.cascade import Cascade, CascadeResult
from tiered.errors import SignalMissingError
from tiered.replay.log import ReplayLog


@dataclass(slots=True)
class ModelPoint:
    """One single model on the evaluated queries."""

    name: str
    quality: float
    cost_per_item: float
    latency_ms: float | None
    missing: int


@dataclass(slots=True)
class OracleBound:
    quality: float
    cost_per_item: float
    choice: np.ndarray  # column of the model the oracle calls, per query


@dataclass
class EvalReport:
    """Everything ``tiered eval`` reports; :meth:`to_dict` is the JSON summary."""

    n_items: int
    quality: float
    cost_per_item: float
    latency_ms: float | None
    stage_share: dict[str, float]
    top_model: str
    top_quality: float
    top_cost_per_item: float
    relative_cost: float | None
    oracle_quality: float
    oracle_cost_per_item: float
    oracle_relative_cost: float | None
    missing_outputs: int
    missing_by_stage: dict[str, int]
    models: list[ModelPoint]
    n_quality_unknown: int = 0
    synthetic: bool = False
    log: str | None = None
    cascade: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)

        def clean(x: Any) -> Any:
            # JSON has no NaN: unknown numbers become null
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x

        return clean(d)  # type: ignore[no-any-return]

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def format_usd(x: float | None) -> str:
    """Dollars for people: three significant digits, no exponent ($0.0000707, $1.23)."""
    if x is None or not math.isfinite(x):
        return "-"
    if x <= 0:
        return "$0"
    decimals = max(0, 2 - math.floor(math.log10(x)))
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"${text}"


def _nanmean(a: np.ndarray) -> float | None:
    ok = np.isfinite(a)
    return float(a[ok].mean()) if ok.any() else None


def single_models(log: ReplayLog) -> list[ModelPoint]:
    """Quality, cost and latency of every model alone, cheapest first (missing = wrong)."""
    q = log.mean_quality()
    c = log.mean_cost()
    miss = (~log.present).sum(axis=0)
    return [
        ModelPoint(
            name=m,
            quality=float(q[j]),
            cost_per_item=float(c[j]),
            latency_ms=_nanmean(log.latency_ms[:, j]),
            missing=int(miss[j]),
        )
        for j, m in enumerate(log.models)
    ]


def top_model(points: list[ModelPoint]) -> ModelPoint:
    """The best single model: highest quality, ties broken by lower cost."""
    best = max(p.quality for p in points)
    tied = [p for p in points if math.isclose(p.quality, best, rel_tol=0.0, abs_tol=1e-12)]
    return min(tied, key=lambda p: p.cost_per_item)


def oracle_bound(log: ReplayLog) -> OracleBound:
    """The cheapest model reaching each query's best quality (see the module docstring)."""
    n = len(log)
    if n == 0:
        return OracleBound(math.nan, math.nan, np.zeros(0, dtype=np.intp))
    # missing outputs rank below every recorded one, so they are chosen only when nothing
    # was recorded for the query
    q = np.where(log.present, log.quality, -1.0)
    best = q.max(axis=1, keepdims=True)
    reaching = q >= best - 1e-12
    cost = np.where(reaching, log.cost, np.inf)
    choice = cost.argmin(axis=1)
    rows = np.arange(n)
    return OracleBound(
        quality=float(log.quality[rows, choice].mean()),
        cost_per_item=float(log.cost[rows, choice].mean()),
        choice=choice,
    )


def _stage_columns(result: CascadeResult, log: ReplayLog, cascade: Cascade | None) -> list[int]:
    """The log column each stage replays (-1 if none): a Replay model's ``model``, else
    a stage named after a model of the log."""
    cols = []
    models = {m: j for j, m in enumerate(log.models)}
    for k, name in enumerate(result.stage_names):
        replayed = None
        if cascade is not None:
            replayed = getattr(cascade.stages[k].model, "model", None)
        key = replayed if isinstance(replayed, str) else name
        cols.append(models.get(key, -1))
    return cols


def evaluate(
    result: CascadeResult, log: ReplayLog, *, cascade: Cascade | None = None
) -> EvalReport:
    """Metrics of ``result`` (a cascade run over queries of ``log``) on those queries."""
    rows = log.rows_for(result.ids)
    if len(rows) != len(log) or not np.array_equal(rows, np.arange(len(log))):
        log = log.subset(rows)
    n = len(log)
    points = single_models(log)
    top = top_model(points)
    orc = oracle_bound(log)

    missed = np.zeros(n, dtype=bool)
    by_stage: dict[str, int] = {}
    for k, col in enumerate(_stage_columns(result, log, cascade)):
        step = next((s for s in result.steps if s.stage == result.stage_names[k]), None)
        if step is None or col < 0:
            by_stage[result.stage_names[k]] = 0
            continue
        lacking = ~log.present[step.indices, col]
        missed[step.indices[lacking]] = True
        by_stage[result.stage_names[k]] = int(lacking.sum())

    known = np.isfinite(result.quality)
    quality = float(result.quality[known].mean()) if known.any() else math.nan
    cost = result.mean_cost()
    has_latency = bool(np.isfinite(log.latency_ms).any())

    def rel(x: float) -> float | None:
        return x / top.cost_per_item if top.cost_per_item > 0 else None

    tasks = {t for t in log.tasks if t is not None}
    return EvalReport(
        n_items=n,
        quality=quality,
        cost_per_item=cost,
        latency_ms=float(result.latency_ms.mean()) if has_latency and n else None,
        stage_share=result.stage_share(),
        top_model=top.name,
        top_quality=top.quality,
        top_cost_per_item=top.cost_per_item,
        relative_cost=rel(cost),
        oracle_quality=orc.quality,
        oracle_cost_per_item=orc.cost_per_item,
        oracle_relative_cost=rel(orc.cost_per_item),
        missing_outputs=int(missed.sum()),
        missing_by_stage=by_stage,
        models=points,
        n_quality_unknown=int((~known).sum()),
        synthetic=tasks == {"synthetic"},
        log=log.path,
        notes=list(log.notes),
    )


def check_signals(cascade: Cascade) -> None:
    """Fail early, naming stage, model and log, when a rule needs a signal a replay lacks.

    (The last stage's rule never runs, so it is not checked.)
    """
    from tiered.replay.model import Replay

    for stage in cascade.stages[:-1]:
        model = stage.model
        if not isinstance(model, Replay):
            continue
        have = model.available_signals()
        lacking = sorted(stage.rule.signals_needed() - set(have))
        if lacking:
            raise SignalMissingError(
                f"stage '{stage.name}': its {stage.rule.kind} rule needs signal "
                f"'{lacking[0]}', which model '{model.model}' does not carry in "
                f"{model.log.path or 'the replay log'}; it carries: {', '.join(have) or 'none'}"
            )


def evaluate_cascade(cascade: Cascade, log: ReplayLog) -> tuple[CascadeResult, EvalReport]:
    """Run ``cascade`` over every query of ``log`` and evaluate it."""
    from tiered.replay.model import replay_items

    check_signals(cascade)
    result = cascade.run(replay_items(log))
    return result, evaluate(result, log, cascade=cascade)


__all__ = [
    "EvalReport",
    "ModelPoint",
    "OracleBound",
    "check_signals",
    "evaluate",
    "evaluate_cascade",
    "format_usd",
    "oracle_bound",
    "single_models",
    "top_model",
]
