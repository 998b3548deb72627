"""A served cascade: the built cascade, its instrumented stages and per-item outcomes.

Every stage's model is wrapped once at start-up (:class:`InstrumentedModel`) so that
the gateway sees each stage call: its wall time and failures go to the metrics, and its
cost to the current request's :class:`Tally` (a context variable), which is what a
request is charged even when a later stage fails or the deadline cuts it short.

Models without ``apredict`` (in-process models: hashed n-grams, llama.cpp) run in a
single worker thread of their own, so they never block the event loop (health checks,
deadlines and other cascades keep going) and are never called concurrently (llama.cpp
contexts are not thread-safe). A call that outlives its request's deadline finishes in
its thread; later calls queue behind it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.core.cascade import Cascade, CascadeResult, Stage
from tiered.core.costs import FixedCost, TokenCost
from tiered.core.items import Item
from tiered.core.model import AsyncModel, Model
from tiered.core.signals import available_signals, read_signal
from tiered.core.spec import BuildContext, CascadeSpec
from tiered.errors import ConfigError
from tiered.models.llm.pricing import PricedModel, input_token_bound
from tiered.models.llm.tools import tools_token_bound
from tiered.serve.config import CascadeEntry, resolve_server_refs
from tiered.serve.metrics import GatewayMetrics
from tiered.serve.protocol import StageTrace
from tiered.serve.tool_calls import ToolRoute, asks_for_tools, tool_route

# --------------------------------------------------------------------------- per-request tally


@dataclass(slots=True)
class StageCall:
    stage: str
    seconds: float
    cost_usd: float
    error: str | None = None
    # wall-clock start (ns since the epoch): when a trace shows the call
    start_ns: int = 0


@dataclass(slots=True)
class Tally:
    """The stage calls one request made (filled in by :class:`InstrumentedModel`)."""

    calls: list[StageCall] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)


CURRENT_TALLY: ContextVar[Tally | None] = ContextVar("tiered_serve_tally", default=None)


class InstrumentedModel:
    """A stage's model, timed and costed per call; sync models run in their own thread."""

    def __init__(self, inner: Model, stage: Stage, cascade: str, metrics: GatewayMetrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.tags = inner.tags
        self._stage = stage
        self._cascade = cascade
        self._metrics = metrics
        self._async: AsyncModel | None = inner if isinstance(inner, AsyncModel) else None
        # what can bound its cost, checked once: a protocol isinstance costs microseconds
        self.priced: PricedModel | None = inner if isinstance(inner, PricedModel) else None
        self._executor: ThreadPoolExecutor | None = None
        if self._async is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"tiered-{stage.name}")

    def __getattr__(self, name: str) -> Any:
        # learn(), state_dict() and friends of the wrapped model stay reachable
        return getattr(self.inner, name)

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        return self.inner.predict(items)

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        start_ns = time.time_ns()
        t0 = time.perf_counter()
        error: str | None = None
        try:
            if self._async is not None:
                answers: AnswerBatch = await self._async.apredict(items)
            else:
                loop = asyncio.get_running_loop()
                answers = await loop.run_in_executor(self._executor, self.inner.predict, items)
        except asyncio.CancelledError:
            error = "Cancelled"
            raise
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            seconds = time.perf_counter() - t0
            self._metrics.observe_call(self._cascade, self._stage.name, seconds, error)
            if error is not None:
                tally = CURRENT_TALLY.get()
                if tally is not None:
                    tally.calls.append(StageCall(self._stage.name, seconds, 0.0, error, start_ns))
        usd = _total_usd(self._stage.cost.cost(answers))
        if usd > 0:
            self._metrics.observe_cost(self._cascade, self._stage.name, usd)
        tally = CURRENT_TALLY.get()
        if tally is not None:
            tally.calls.append(StageCall(self._stage.name, seconds, usd, None, start_ns))
        return answers

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _total_usd(costs: np.ndarray) -> float:
    """The sum of a call's costs, NaN as 0 (one item, the gateway's usual batch, without
    numpy's per-call overhead)."""
    if costs.size == 1:
        usd = float(costs.reshape(-1)[0])
        return 0.0 if math.isnan(usd) else usd
    return float(np.nansum(costs))


# --------------------------------------------------------------------------- outcomes


@dataclass(slots=True)
class ItemOutcome:
    """The cascade's answer for one item, as the gateway reports it."""

    label: str | None
    stage: str
    stage_index: int
    cost_usd: float
    latency_ms: float
    confidence: float | None
    signals: dict[str, float]
    trace: list[StageTrace]
    tokens_in: int = 0
    tokens_out: int = 0
    learned: bool = False
    # the answering stage's raw text when its label is a normalised form of it
    # (``AnswerBatch.extra["text"]``, as OpenAIChat gives); chat answers return this
    raw_text: str | None = None
    # the tool calls of the answer (OpenAI's shape), for a request with tools
    tool_calls: list[dict[str, Any]] | None = None

    @property
    def text(self) -> str | None:
        """What a chat/completions client gets: the raw text, else the label."""
        if self.label is None:
            return None
        return self.raw_text or self.label


def _num(x: float) -> float:
    return 0.0 if math.isnan(x) else float(x)


def _confidence_signal(stage: Stage) -> str | None:
    """The signal that says how sure a stage is: the one its rule reads (if only one)."""
    needed = stage.rule.signals_needed()
    return next(iter(needed)) if len(needed) == 1 else None


def outcomes_of(result: CascadeResult, stages: Sequence[Stage]) -> list[ItemOutcome]:
    """Per-item outcomes with the trace of every stage that ran (column-wise reads)."""
    n = len(result)
    traces: list[list[StageTrace]] = [[] for _ in range(n)]
    tokens: list[tuple[int, int]] = [(0, 0)] * n
    raw: list[str | None] = [None] * n
    calls: list[Any] = [None] * n
    for step in result.steps:
        a = step.answers
        cols = {name: read_signal(a, name) for name in available_signals(a)}
        errors = a.extra.get("error")
        texts = a.extra.get("text")
        made = a.extra.get("tool_calls")
        t_in = a.tokens_in
        t_out = a.tokens_out
        cost = step.cost.tolist()
        lat = a.latency_ms.tolist()
        acc = step.accepted.tolist()
        for pos, i in enumerate(step.indices.tolist()):
            sigs = {k: float(v[pos]) for k, v in cols.items() if not math.isnan(v[pos])}
            traces[i].append(
                StageTrace(
                    stage=step.stage,
                    accepted=acc[pos],
                    cost_usd=_num(cost[pos]),
                    latency_ms=_num(lat[pos]),
                    signals=sigs,
                    error=errors[pos] if errors is not None else None,
                )
            )
            if acc[pos]:
                if texts is not None:
                    raw[i] = texts[pos]
                if made is not None:
                    calls[i] = made[pos]
                tokens[i] = (
                    0 if t_in is None else int(_num(t_in[pos])),
                    0 if t_out is None else int(_num(t_out[pos])),
                )
    out = []
    for i in range(n):
        k = int(result.answered_by[i])
        trace = traces[i]
        signals = trace[-1].signals if trace else {}
        preferred = _confidence_signal(stages[k])
        conf = signals.get(preferred) if preferred else None
        if conf is None:
            conf = signals.get("max_prob")
        if conf is None and len(signals) == 1:
            conf = next(iter(signals.values()))
        out.append(
            ItemOutcome(
                label=result.labels[i],
                stage=result.stage_names[k],
                stage_index=k,
                cost_usd=_num(float(result.cost[i])),
                latency_ms=_num(float(result.latency_ms[i])),
                confidence=conf,
                signals=signals,
                trace=trace,
                tokens_in=tokens[i][0],
                tokens_out=tokens[i][1],
                raw_text=raw[i],
                tool_calls=calls[i],
            )
        )
    return out


# --------------------------------------------------------------------------- served cascade


def cascade_spec(entry: CascadeEntry, resources: dict[str, Any] | None) -> CascadeSpec:
    """The entry as a cascade spec, ``server:NAME`` URLs resolved to the started servers."""
    urls = (resources or {}).get("local_servers") or {}
    stages = [
        s.model_copy(update={"model": resolve_server_refs(s.model, urls)}) if urls else s
        for s in entry.stage_specs()
    ]
    return CascadeSpec(name=entry.name, stages=stages, metadata=entry.metadata)


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The most a request can cost, and whether that is a true bound."""

    usd: float
    # every stage could bound its cost: the request is never charged more than usd
    bounded: bool


def model_worst_case(model: Model, items: Sequence[Item]) -> float | None:
    """What ``model`` can charge for ``items`` at most, when it can say (a PricedModel)."""
    if isinstance(model, InstrumentedModel):
        priced = model.priced
    else:
        priced = model if isinstance(model, PricedModel) else None
    return None if priced is None else float(priced.worst_case_cost(items))


class ServedCascade:
    """One cascade behind one model name."""

    def __init__(
        self,
        entry: CascadeEntry,
        cascade: Cascade,
        metrics: GatewayMetrics,
        *,
        deadline_s: float,
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.task = entry.task
        self.deadline_s = entry.deadline_s or deadline_s
        self.metrics = metrics
        self.cascade = cascade
        self._wrapped: list[InstrumentedModel] = []
        for stage in cascade.stages:
            if not isinstance(stage.model, InstrumentedModel):
                stage.model = InstrumentedModel(stage.model, stage, self.name, metrics)
                self._wrapped.append(stage.model)
        try:
            # requests with tools: the stages that take them (None: such requests are 400s)
            self.tools: ToolRoute | None = tool_route(entry, cascade)
        except ConfigError as exc:
            raise entry.located(exc) from exc
        self.created = int(time.time())

    @classmethod
    def build(
        cls,
        entry: CascadeEntry,
        metrics: GatewayMetrics,
        *,
        deadline_s: float,
        resources: dict[str, Any] | None = None,
    ) -> ServedCascade:
        spec = cascade_spec(entry, resources)
        ctx = BuildContext(
            base_dir=entry.base_dir, resources=resources if resources is not None else {}
        )
        try:
            cascade = spec.build(ctx)
        except ConfigError as exc:
            raise entry.located(exc) from exc
        return cls._create(entry, cascade, metrics, deadline_s=deadline_s, resources=ctx.resources)

    @classmethod
    def _create(
        cls,
        entry: CascadeEntry,
        cascade: Cascade,
        metrics: GatewayMetrics,
        *,
        deadline_s: float,
        resources: dict[str, Any],
    ) -> ServedCascade:
        """The served cascade around a built one; subclasses take what they need from resources."""
        return cls(entry, cascade, metrics, deadline_s=deadline_s)

    @property
    def stage_names(self) -> list[str]:
        return self.cascade.stage_names

    def worst_case(self, items: Sequence[Item], max_tokens: int | None = None) -> WorstCase:
        """What answering ``items`` can cost at most, reserved against the caller's budget.

        ``reserve_usd`` (per item, the operator's bound) when the cascade sets it; else the
        sum of every stage's worst case: a fixed price per call; token prices over the input
        (its UTF-8 bytes, which no tokenizer exceeds) and ``max_tokens`` of output; or the
        model's own :meth:`~tiered.models.llm.PricedModel.worst_case_cost`. A stage with
        none of these adds nothing and makes the sum an estimate, not a bound (such a
        request is admitted while the key has budget left, and charged what it reports).
        """
        if self.entry.reserve_usd is not None:
            return WorstCase(self.entry.reserve_usd * len(items), bounded=True)
        out_tokens = max_tokens or self.entry.max_tokens
        total = 0.0
        bounded = True
        for stage in self._route(items)[0].stages:
            cost = stage.cost
            if isinstance(cost, FixedCost):
                total += cost.usd_per_call * len(items)
            elif isinstance(cost, TokenCost):
                tokens_in = sum(
                    input_token_bound(it.input) + tools_token_bound(it.params) for it in items
                )
                total += (
                    cost.usd_per_request * len(items)
                    + cost.usd_per_input_token * tokens_in
                    + cost.usd_per_output_token * out_tokens * len(items)
                )
            else:
                usd = model_worst_case(stage.model, items)
                bounded &= usd is not None
                total += usd or 0.0
        return WorstCase(total, bounded)

    def _route(self, items: Sequence[Item]) -> tuple[Cascade, list[int] | None]:
        """The cascade ``items`` run through, and its stages' positions (None: all)."""
        if self.tools is not None and asks_for_tools(items):
            return self.tools.cascade, self.tools.positions
        return self.cascade, None

    async def run(self, items: Sequence[Item]) -> list[ItemOutcome]:
        """Answer ``items`` (one cascade batch); per-stage metrics are recorded here."""
        cascade, positions = self._route(items)
        result = await cascade.arun(items)
        self.metrics.observe_result(self.name, result)
        out = outcomes_of(result, cascade.stages)
        if positions is not None:  # stage indices of the served cascade, as everywhere
            for o in out:
                o.stage_index = positions[o.stage_index]
        return out

    def close(self) -> None:
        for m in self._wrapped:
            m.close()


__all__ = [
    "CURRENT_TALLY",
    "InstrumentedModel",
    "ItemOutcome",
    "ServedCascade",
    "StageCall",
    "Tally",
    "WorstCase",
    "cascade_spec",
    "model_worst_case",
    "outcomes_of",
]
