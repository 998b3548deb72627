"""Replay a cascade on a log view with whole-column numpy masks, exactly as the engine would.

``Cascade.run`` calls each stage on the items still open; a built-in rule decides each
item from that item's own answers (and earlier stages' answers for the same item), so
running every rule once on the whole column and chaining the masks gives the same
decisions, costs and qualities without the per-stage bookkeeping. Costs accumulate in
the engine's order, so the numbers agree to the last bit; the tests pin that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tiered.core.cascade import Cascade, Gate
from tiered.core.costs import CostModel, RecordedCost
from tiered.core.rules import (
    Agreement,
    AllOf,
    AnyOf,
    DeferralRule,
    Never,
    RuleContext,
    Threshold,
)
from tiered.core.spec import BuildContext, CascadeSpec
from tiered.errors import ConfigError
from tiered.replay.model import Replay
from tiered.replay.view import LogView


@dataclass(frozen=True, slots=True)
class StageRef:
    """A stage as the evaluator needs it: its name, the log column it replays, rule and cost."""

    name: str
    column: int
    rule: DeferralRule
    cost: CostModel = field(default_factory=RecordedCost)
    gate: Gate | None = None


@dataclass(slots=True)
class Outcome:
    """Per-query result of a cascade on a view (the columns of a ``CascadeResult``)."""

    stage_names: list[str]
    answered_by: np.ndarray  # stage index per query
    cost: np.ndarray
    quality: np.ndarray
    latency_ms: np.ndarray

    @property
    def mean_quality(self) -> float:
        return float(self.quality.mean()) if len(self.quality) else float("nan")

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean()) if len(self.cost) else float("nan")

    def stage_share(self) -> dict[str, float]:
        n = max(len(self.answered_by), 1)
        counts = np.bincount(self.answered_by, minlength=len(self.stage_names))
        return {s: float(c) / n for s, c in zip(self.stage_names, counts, strict=True)}


def _context(
    view: LogView, stage: StageRef, index: int, earlier: dict[str, list[str | None]]
) -> RuleContext:
    return RuleContext(
        stage_name=stage.name, stage_index=index, items=view.items(), earlier=earlier
    )


def _fast_accept(
    rule: DeferralRule, view: LogView, col: int, earlier: dict[str, int]
) -> np.ndarray | None:
    """The accept mask of a built-in rule from the view's matrices, or None to use the
    rule's own code. Agreement compares the view's answer codes, made by the same
    :func:`~tiered.core.rules.normalize_answer` the rule uses: long answers are not
    normalised again for every cascade scored."""
    answered = view.answered[:, col]
    if type(rule) is Threshold:
        s = view.signals.get(rule.signal)
        if s is None or np.isnan(s[:, col]).all():
            return None  # let the rule raise its clear SignalMissingError
        with np.errstate(invalid="ignore"):
            m = s[:, col] >= rule.threshold if rule.accepts_above else s[:, col] <= rule.threshold
        return m & answered
    if type(rule) is Agreement:
        names = rule.stages or list(earlier)
        if not rule.casefold or any(x not in earlier for x in names):
            return None
        count = view.agree_count(col, tuple(earlier[x] for x in names), rule.extract)
        return (count >= rule.min_agree) & answered
    if type(rule) in (AnyOf, AllOf):
        any_of = type(rule) is AnyOf
        mask = np.zeros(view.n, bool) if any_of else np.ones(view.n, bool)
        for r in rule.rules:  # type: ignore[attr-defined]
            inner = _fast_accept(r, view, col, earlier)
            if inner is None:
                return None
            mask = mask | inner if any_of else mask & inner
        return mask & answered
    if type(rule) is Never:
        return np.zeros(view.n, dtype=bool)
    return None


def evaluate_stages(view: LogView, stages: Sequence[StageRef]) -> Outcome:
    """Run the cascade ``stages`` over every row of ``view`` (the engine's semantics,
    gates included: a gated-out query skips the stage unpaid)."""
    if not stages:
        raise ConfigError("a cascade needs at least one stage", field="stages")
    n = view.n
    last = len(stages) - 1
    answered_by = np.full(n, last, dtype=np.int64)
    cost = np.zeros(n)
    latency = np.zeros(n)
    quality = np.full(n, np.nan)
    active = np.ones(n, dtype=bool)
    to_last = np.zeros(n, dtype=bool)  # sent straight to the last stage by a gate
    earlier: dict[str, list[str | None]] = {}
    columns: dict[str, int] = {}  # earlier stage -> its column, for the fast path
    # with gates an earlier stage may not have run for a query: use the rules' own code
    gated = any(s.gate is not None for s in stages[:last])
    for k, stage in enumerate(stages):
        if not active.any():
            break
        run = active.copy()
        if k < last:
            run &= ~to_last
            if stage.gate is not None and run.any():
                admit = np.asarray(stage.gate.admit(_context(view, stage, k, earlier)), bool)
                if stage.gate.on_reject == "last":
                    to_last |= run & ~admit
                run &= admit
        skipped = active & ~run
        if not run.any():
            if k < last:
                earlier[stage.name] = [None] * n
            continue
        answers = view.answers(stage.column)
        paid = np.asarray(stage.cost.cost(answers), dtype=float)
        cost[run] += paid[run]
        latency[run] += np.nan_to_num(answers.latency_ms[run])
        if k == last:
            accepted = np.ones(n, dtype=bool)
        else:
            fast = None if gated else _fast_accept(stage.rule, view, stage.column, columns)
            if fast is None:
                fast = stage.rule(answers, _context(view, stage, k, earlier))
            accepted = fast
            columns[stage.name] = stage.column
        done = run & accepted
        answered_by[done] = k
        # the view's quality matrix: the log's recorded quality, or a smoothed estimate of it
        quality[done] = view.quality[done, stage.column]
        if k < last:
            labels = answers.labels
            earlier[stage.name] = (
                labels
                if run.all()
                else [x if r else None for x, r in zip(labels, run.tolist(), strict=True)]
            )
        active = skipped | (run & ~accepted)
    return Outcome([s.name for s in stages], answered_by, cost, quality, latency)


def stages_of_cascade(cascade: Cascade, view: LogView) -> list[StageRef]:
    """The stages of a built cascade as replayed columns of ``view``'s log."""
    refs = []
    for i, st in enumerate(cascade.stages):
        name = getattr(st.model, "model", None)
        if not isinstance(st.model, Replay) or not isinstance(name, str):
            raise ConfigError(
                f"stage '{st.name}' is not a replay model; only replay models can be "
                "evaluated on a replay log",
                field=f"stages.{i}.model.kind",
            )
        try:
            col = view.log.model_index(name)
        except ConfigError as exc:
            raise ConfigError(exc.reason, field=f"stages.{i}.model.model") from None
        refs.append(StageRef(st.name, col, st.rule, st.cost, st.gate))
    return refs


def evaluate_spec(spec: CascadeSpec, view: LogView) -> Outcome:
    """Replay a cascade file's stages (replay models) over ``view``, vectorised."""
    cascade = spec.build(BuildContext(resources={"replay_log": view.log}))
    return evaluate_stages(view, stages_of_cascade(cascade, view))


__all__ = [
    "Outcome",
    "StageRef",
    "evaluate_spec",
    "evaluate_stages",
    "stages_of_cascade",
]
