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
from tiered.core.model import Model
from tiered.core.signals import available_signals, read_signal
from tiered.core.spec import BuildContext, CascadeSpec
from tiered.errors import ConfigError
from tiered.serve.config import CascadeEntry, resolve_server_refs
from tiered.serve.metrics import GatewayMetrics
from tiered.serve.protocol import StageTrace

# --------------------------------------------------------------------------- per-request tally


@dataclass(slots=True)
class StageCall:
    stage: str
    seconds: float
    cost_usd: float
    error: str | None = None


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
        self._apredict = getattr(inner, "apredict", None)
        self._executor: ThreadPoolExecutor | None = None
        if not callable(self._apredict):
            self._apredict = None
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"tiered-{stage.name}")

    def __getattr__(self, name: str) -> Any:
        # learn(), state_dict() and friends of the wrapped model stay reachable
        return getattr(self.inner, name)

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        return self.inner.predict(items)

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        t0 = time.perf_counter()
        error: str | None = None
        try:
            if self._apredict is not None:
                answers: AnswerBatch = await self._apredict(items)
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
                    tally.calls.append(StageCall(self._stage.name, seconds, 0.0, error))
        usd = float(np.nansum(self._stage.cost.cost(answers)))
        if usd > 0:
            self._metrics.observe_cost(self._cascade, self._stage.name, usd)
        tally = CURRENT_TALLY.get()
        if tally is not None:
            tally.calls.append(StageCall(self._stage.name, seconds, usd))
        return answers

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


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

    @property
    def text(self) -> str | None:
        """What a chat/completions client gets: the raw text, else the label."""
        if self.label is None:
            return None
        return self.raw_text or self.label


def _num(x: float) -> float:
    return 0.0 if math.isnan(x) else float(x)


def _confidence_signal(stage: Stage) -> str | None:
    """The signal that says how sure a stage is: the one its rule reads, else max_prob."""
    sig = getattr(stage.rule, "signal", None)
    return sig if isinstance(sig, str) else None


def outcomes_of(result: CascadeResult, stages: Sequence[Stage]) -> list[ItemOutcome]:
    """Per-item outcomes with the trace of every stage that ran (column-wise reads)."""
    n = len(result)
    traces: list[list[StageTrace]] = [[] for _ in range(n)]
    tokens: list[tuple[int, int]] = [(0, 0)] * n
    raw: list[str | None] = [None] * n
    for step in result.steps:
        a = step.answers
        cols = {name: read_signal(a, name) for name in available_signals(a)}
        errors = a.extra.get("error")
        texts = a.extra.get("text")
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


def model_worst_case(model: Any, items: Sequence[Item], out_tokens: int) -> float:
    """What a model that prices its own calls can charge for ``items`` at most.

    ``model.worst_case_cost(items, max_tokens)`` when it has one; else, for models with a
    ``spec.prices.of(tokens_in, tokens_out)`` (``OpenAIChat``): input bytes as tokens (a
    byte-level tokenizer never makes more) plus the prompt template, and the stage's
    ``max_tokens`` out, for each sample and prompt variant; else 0 (unknown).
    """
    bound = getattr(model, "worst_case_cost", None)
    if callable(bound):
        return float(bound(items, out_tokens))
    spec = getattr(model, "spec", None)
    of = getattr(getattr(spec, "prices", None), "of", None)
    if not callable(of):
        return 0.0
    default_max = getattr(spec, "default_max_tokens", None)
    max_out = int(default_max()) if callable(default_max) else out_tokens
    calls = int(getattr(spec, "samples", 1) or 1) * (
        2 if getattr(spec, "verify_prompt", None) else 1
    )
    template = 64 + sum(
        len(str(getattr(spec, name, None) or "").encode())
        for name in ("prompt", "verify_prompt", "system")
    )
    return float(sum(of(len(it.text.encode()) + template, max_out) * calls for it in items))


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

    def worst_case_usd(self, items: Sequence[Item], max_tokens: int | None = None) -> float:
        """What answering ``items`` can cost at most, reserved against the caller's budget.

        ``reserve_usd`` (per item) when the cascade sets it; else every stage's worst
        case: a fixed price per call, token prices over the input (4 characters a token,
        rounded up) and ``max_tokens`` of output, or the model's own
        ``worst_case_cost(items, max_tokens)`` when it has one; 0 when none of these
        says (such a request is admitted while the key has budget left).
        """
        if self.entry.reserve_usd is not None:
            return self.entry.reserve_usd * len(items)
        out_tokens = max_tokens or self.entry.max_tokens
        total = 0.0
        for stage in self.cascade.stages:
            cost = stage.cost
            if isinstance(cost, FixedCost):
                total += cost.usd_per_call * len(items)
            elif isinstance(cost, TokenCost):
                chars = sum(len(it.text) for it in items)
                total += (
                    cost.usd_per_request * len(items)
                    + cost.usd_per_input_token * (chars // 4 + len(items))
                    + cost.usd_per_output_token * out_tokens * len(items)
                )
            else:
                model = stage.model
                if isinstance(model, InstrumentedModel):
                    model = model.inner
                total += model_worst_case(model, items, out_tokens)
        return total

    async def run(self, items: Sequence[Item]) -> list[ItemOutcome]:
        """Answer ``items`` (one cascade batch); per-stage metrics are recorded here."""
        result = await self.cascade.arun(items)
        self.metrics.observe_result(self.name, result)
        return outcomes_of(result, self.cascade.stages)

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
    "cascade_spec",
    "model_worst_case",
    "outcomes_of",
]
