"""The cascade engine: run items through stages cheap to expensive, batch-first.

Each stage answers every item still active; its rule's accept mask decides which items
it answers, the rest go on. The last stage answers whatever reaches it. Cost and latency
are cumulative: every stage that ran for an item is paid for and waited on.

A stage may have a *gate*, asked before the stage runs: items it does not admit skip the
stage (its model never sees them and they are not charged for it) and go on to the next
stage, or straight to the last one. The last stage has no gate: it answers what reaches it.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeGuard, cast, runtime_checkable

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.core.costs import CostModel, RecordedCost
from tiered.core.items import Item, as_items
from tiered.core.model import AsyncModel, Model
from tiered.core.rules import Always, DeferralRule, RuleContext
from tiered.core.signals import available_signals, read_signal
from tiered.errors import ConfigError, ModelError


@runtime_checkable
class Gate(Protocol):
    """Decides, before a stage runs, which items it should see (a pre-generation router).

    ``admit`` gets the items reaching the stage in ``ctx.items`` (with earlier stages'
    labels in ``ctx.earlier``) and returns a boolean mask: False skips the stage. Skipped
    items go to the next stage, or to the last one when ``on_reject == "last"``.
    """

    on_reject: Literal["next", "last"]

    def admit(self, ctx: RuleContext) -> np.ndarray: ...


@dataclass
class Stage:
    """A model, what a call costs, and when to trust its answer."""

    name: str
    model: Model
    rule: DeferralRule = field(default_factory=Always)
    cost: CostModel = field(default_factory=RecordedCost)
    # "defer": an upstream failure passes the stage's items on (the last stage still raises)
    on_error: Literal["raise", "defer"] = "raise"
    # asked before the model runs; not consulted on the last stage
    gate: Gate | None = None


@dataclass(slots=True)
class StageStep:
    """What one stage did for the items that reached it (positions in the input batch)."""

    stage: str
    indices: np.ndarray
    answers: AnswerBatch
    cost: np.ndarray
    accepted: np.ndarray
    # positions that reached the stage but skipped it (its gate said no, or an earlier gate
    # sent them to the last stage): not run, not charged
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(slots=True)
class StepTrace:
    stage: str
    label: str | None
    signals: dict[str, float]
    cost: float
    latency_ms: float
    accepted: bool


@dataclass(slots=True)
class Decision:
    """The cascade's answer for one item, with the trace of every stage that ran."""

    id: str
    label: str | None
    stage: str
    stage_index: int
    cost: float
    latency_ms: float
    confidence: dict[str, float]
    trace: list[StepTrace]
    quality: float | None = None


def _earlier(labels: dict[str, np.ndarray], run: np.ndarray) -> dict[str, Sequence[str | None]]:
    """Earlier stages' labels at the positions ``run`` (object arrays: str | None each)."""
    return {name: cast("Sequence[str | None]", lab[run]) for name, lab in labels.items()}


class CascadeResult:
    """Columnar result of ``Cascade.run``; index it for per-item :class:`Decision` s."""

    def __init__(
        self,
        ids: list[str],
        stage_names: list[str],
        steps: list[StageStep],
        answered_by: np.ndarray,
        labels: list[str | None],
        cost: np.ndarray,
        latency_ms: np.ndarray,
        quality: np.ndarray,
    ) -> None:
        self.ids = ids
        self.stage_names = stage_names
        self.steps = steps
        self.answered_by = answered_by
        self.labels = labels
        self.cost = cost
        self.latency_ms = latency_ms
        self.quality = quality

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> Decision:
        trace: list[StepTrace] = []
        for step in self.steps:
            pos = int(np.searchsorted(step.indices, i))
            if pos >= len(step.indices) or step.indices[pos] != i:
                continue
            a = step.answers
            signals = {}
            for name in available_signals(a):
                v = float(read_signal(a.take(np.array([pos])), name)[0])
                if not math.isnan(v):
                    signals[name] = v
            trace.append(
                StepTrace(
                    stage=step.stage,
                    label=a.labels[pos],
                    signals=signals,
                    cost=float(step.cost[pos]),
                    latency_ms=float(a.latency_ms[pos]),
                    accepted=bool(step.accepted[pos]),
                )
            )
        k = int(self.answered_by[i])
        q = float(self.quality[i])
        return Decision(
            id=self.ids[i],
            label=self.labels[i],
            stage=self.stage_names[k],
            stage_index=k,
            cost=float(self.cost[i]),
            latency_ms=float(self.latency_ms[i]),
            confidence=trace[-1].signals if trace else {},
            trace=trace,
            quality=None if math.isnan(q) else q,
        )

    def decisions(self) -> list[Decision]:
        return list(self)

    def stage_share(self) -> dict[str, float]:
        """Share of items each stage answered."""
        n = max(len(self), 1)
        counts = np.bincount(self.answered_by, minlength=len(self.stage_names))
        return {name: float(c) / n for name, c in zip(self.stage_names, counts, strict=True)}

    def mean_cost(self) -> float:
        return float(self.cost.mean()) if len(self) else 0.0

    def mean_quality(self) -> float:
        """Mean known quality (NaN where no stage reported one)."""
        return float(np.nanmean(self.quality)) if np.isfinite(self.quality).any() else math.nan


# A stage request: the cascade asks the runner for answers of `stage` on `items`.
_Request = tuple[Stage, list[Item]]


class Cascade:
    """An ordered list of stages, cheap to expensive; the last one always answers."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ConfigError("a cascade needs at least one stage", field="stages")
        names = [s.name for s in stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"stage names must be unique; repeated: {dupes}", field="stages")
        self.stages = list(stages)
        self._async_seen: dict[str, tuple[object, bool]] = {}

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def run(self, items: Sequence[Item | str]) -> CascadeResult:
        """Answer every item; models are called once per stage on the items still open."""
        driver = self._drive(as_items(items))
        try:
            stage, batch = next(driver)
            while True:
                try:
                    answers = stage.model.predict(batch)
                except ModelError as exc:
                    answers = self._failed(stage, batch, exc)
                stage, batch = driver.send(answers)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def arun(self, items: Sequence[Item | str]) -> CascadeResult:
        """As :meth:`run`, awaiting models that implement ``apredict``."""
        driver = self._drive(as_items(items))
        try:
            stage, batch = next(driver)
            while True:
                model = stage.model
                try:
                    if self._is_async(model, stage):
                        answers = await model.apredict(batch)
                    else:
                        answers = model.predict(batch)
                except ModelError as exc:
                    answers = self._failed(stage, batch, exc)
                stage, batch = driver.send(answers)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _is_async(self, model: object, stage: Stage) -> TypeGuard[AsyncModel]:
        # A runtime protocol check walks every attribute of the protocol: too slow for a
        # gateway's per-request path, so it is done once per model a stage holds.
        seen = self._async_seen.get(stage.name)
        if seen is None or seen[0] is not model:
            seen = (model, isinstance(model, AsyncModel))
            self._async_seen[stage.name] = seen
        return seen[1]

    def _failed(self, stage: Stage, batch: list[Item], exc: ModelError) -> AnswerBatch:
        """No answers from a failed stage: pass its items on, or re-raise."""
        if stage.on_error != "defer" or stage is self.stages[-1]:
            raise exc
        return AnswerBatch.from_labels(
            [None] * len(batch), extra={"error": [f"{type(exc).__name__}: {exc}"] * len(batch)}
        )

    def run_one(self, item: Item | str) -> Decision:
        return self.run([item])[0]

    @staticmethod
    def _admit(
        stage: Stage,
        k: int,
        items: list[Item],
        run: np.ndarray,
        earlier_labels: dict[str, np.ndarray],
        to_last: np.ndarray,
    ) -> np.ndarray:
        """The positions in ``run`` that the stage's gate admits; marks jumps to the last."""
        assert stage.gate is not None
        ctx = RuleContext(
            stage_name=stage.name,
            stage_index=k,
            items=[items[i] for i in run.tolist()],
            earlier=_earlier(earlier_labels, run),
        )
        admit = np.asarray(stage.gate.admit(ctx), dtype=bool)
        if admit.shape != run.shape:
            raise ModelError(
                f"gate of stage '{stage.name}' returned a mask of shape {admit.shape} "
                f"for {run.size} items"
            )
        if stage.gate.on_reject == "last":
            to_last[run[~admit]] = True
        admitted: np.ndarray = run[admit]
        return admitted

    def _drive(self, items: list[Item]) -> Generator[_Request, AnswerBatch, CascadeResult]:
        n = len(items)
        answered_by = np.full(n, len(self.stages) - 1, dtype=np.int64)
        labels = np.full(n, None, dtype=object)
        cost = np.zeros(n)
        latency = np.zeros(n)
        quality = np.full(n, np.nan)
        steps: list[StageStep] = []
        earlier_labels: dict[str, np.ndarray] = {}
        active = np.arange(n)
        to_last = np.zeros(n, dtype=bool)  # sent straight to the last stage by a gate
        last = len(self.stages) - 1
        for k, stage in enumerate(self.stages):
            if active.size == 0:
                break
            run = active
            if k < last:
                run = active[~to_last[active]]
                if stage.gate is not None and run.size:
                    run = self._admit(stage, k, items, run, earlier_labels, to_last)
            # run is a subset of active: the same size means nothing skipped (the usual case;
            # setdiff1d's fixed cost shows in the gateway's per-request time)
            skipped = active[:0] if run.size == active.size else np.setdiff1d(active, run, True)
            if run.size == 0:
                if k < last:
                    earlier_labels[stage.name] = np.full(n, None, dtype=object)
                empty = np.zeros(0)
                steps.append(
                    StageStep(
                        stage.name, run, AnswerBatch.empty(), empty, empty.astype(bool), skipped
                    )
                )
                continue
            batch = [items[i] for i in run.tolist()]
            answers = yield (stage, batch)
            if len(answers) != run.size:
                raise ModelError(
                    f"model of stage '{stage.name}' returned {len(answers)} answers "
                    f"for {run.size} items"
                )
            paid = stage.cost.cost(answers)
            cost[run] += paid
            latency[run] += np.nan_to_num(answers.latency_ms)
            if k == last:
                accepted = np.ones(run.size, dtype=bool)
            elif not answers.answered.any():
                # nothing to accept (a failed stage that defers carries no signals either)
                accepted = np.zeros(run.size, dtype=bool)
            else:
                ctx = RuleContext(
                    stage_name=stage.name,
                    stage_index=k,
                    items=batch,
                    earlier=_earlier(earlier_labels, run),
                )
                accepted = stage.rule(answers, ctx)
            steps.append(StageStep(stage.name, run, answers, paid, accepted, skipped))
            mine = np.empty(run.size, dtype=object)
            mine[:] = answers.labels
            done = run[accepted]
            answered_by[done] = k
            labels[done] = mine[accepted]
            if answers.quality is not None:
                quality[done] = answers.quality[accepted]
            if k < last:
                full = np.full(n, None, dtype=object)
                full[run] = mine
                earlier_labels[stage.name] = full
            active = np.union1d(skipped, run[~accepted]) if skipped.size else run[~accepted]
        return CascadeResult(
            ids=[it.id for it in items],
            stage_names=self.stage_names,
            steps=steps,
            answered_by=answered_by,
            labels=labels.tolist(),
            cost=cost,
            latency_ms=latency,
            quality=quality,
        )


__all__ = ["Cascade", "CascadeResult", "Decision", "Gate", "Stage", "StageStep", "StepTrace"]
