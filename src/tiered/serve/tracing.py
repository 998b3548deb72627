"""OpenTelemetry spans: one per API request, and under it one per stage run.

Off by default. With ``server.tracing`` set, :class:`TracingMiddleware` wraps the app:
each ``/v1/*`` request opens a :class:`RequestRecord` (a context variable) that the
gateway fills in as the request runs (the cascade, its stage calls); when the response
has gone out, the record becomes a ``SERVER`` span (continuing the client's
``traceparent`` when it sent one) with a child span per stage call, timed as the call
was. Spans carry names, counts, costs and status codes, never a prompt, an answer or a
key (only the key's name). They go to an OTLP/HTTP collector in batches, off the
request path.

Nothing here imports ``opentelemetry`` until a :class:`RequestTracer` is built, so a
gateway without tracing neither needs the ``otel`` extra nor pays for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiered.errors import ConfigError
from tiered.serve.config import TracingSettings

if TYPE_CHECKING:
    from tiered.serve.engine import ItemOutcome, Tally

INSTRUMENTATION = "tiered.serve"
logger = logging.getLogger("tiered.serve")


@dataclass(slots=True)
class RequestRecord:
    """What one traced request did, filled in by the gateway as it runs."""

    start_ns: int
    cascade: str | None = None
    stages: list[str] = field(default_factory=list)
    tally: Tally | None = None
    # set when the cascade answered: per-item outcomes and what the request was charged
    outcomes: list[ItemOutcome] | None = None
    cost_usd: float = 0.0

    def begin(self, cascade: str, stages: list[str], tally: Tally) -> None:
        self.cascade, self.stages, self.tally = cascade, stages, tally

    def answered(self, outcomes: list[ItemOutcome], cost_usd: float) -> None:
        self.outcomes, self.cost_usd = outcomes, cost_usd


# set by TracingMiddleware for the request being served; None when tracing is off
CURRENT_RECORD: ContextVar[RequestRecord | None] = ContextVar("tiered_request", default=None)


def _version() -> str:
    # the distribution's metadata: ``tiered.__version__`` lives a layer above serve
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tiered")
    except PackageNotFoundError:
        return "0+unknown"


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector address (``/v1/traces`` added if absent)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class RequestTracer:
    """Builds the spans of finished requests; owns its tracer provider (never the global).

    ``exporter`` replaces the OTLP exporter (tests pass the SDK's in-memory one; spans
    are then exported as they end).
    """

    def __init__(self, settings: TracingSettings, *, exporter: Any = None) -> None:
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise ConfigError(
                "server.tracing needs OpenTelemetry: pip install 'tiered[otel]'",
                field="server.tracing",
            ) from exc
        version = _version()
        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": version}
        )
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio))
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=traces_url(settings.otlp_endpoint), headers=settings.headers or None
            )
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer(INSTRUMENTATION, version)
        self._trace = trace
        self._propagate = propagate

    def record(self, scope: Scope, record: RequestRecord, status: int) -> None:
        """The spans of one finished request."""
        trace = self._trace
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = self._propagate.extract(headers)
        method, path = scope["method"], scope["path"]
        state: Mapping[str, Any] = scope.get("state") or {}
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "http.response.status_code": status,
        }
        for key, name in (("request_id", "tiered.request_id"), ("model", "tiered.model")):
            if isinstance(state.get(key), str):
                attrs[name] = state[key]
        principal = state.get("principal")
        if principal is not None:
            attrs["tiered.key"] = principal.name  # the key's name, never the key
        outcomes = record.outcomes
        tally = record.tally
        if record.cascade is not None:
            attrs["tiered.cascade"] = record.cascade
        if outcomes is not None:
            attrs["tiered.cost_usd"] = record.cost_usd
            attrs["tiered.items"] = len(outcomes)
            attrs["tiered.stage"] = ",".join(sorted({o.stage for o in outcomes}))
            attrs["tiered.deferrals"] = sum(o.stage_index for o in outcomes)
            attrs["gen_ai.usage.input_tokens"] = sum(o.tokens_in for o in outcomes)
            attrs["gen_ai.usage.output_tokens"] = sum(o.tokens_out for o in outcomes)
        elif tally is not None:
            attrs["tiered.cost_usd"] = tally.cost_usd
        if status >= 400:
            attrs["error.type"] = str(status)
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attrs,
            start_time=record.start_ns,
        )
        if status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        if tally is not None and span.is_recording():
            self._stage_spans(trace.set_span_in_context(span), record, tally)
        span.end()

    def _stage_spans(self, ctx: Any, record: RequestRecord, tally: Tally) -> None:
        trace = self._trace
        verdicts: dict[str, list[int]] = {}  # stage -> [accepted, deferred]
        if record.outcomes is not None:
            for o in record.outcomes:
                for t in o.trace:
                    verdicts.setdefault(t.stage, [0, 0])[0 if t.accepted else 1] += 1
        for call in tally.calls:
            attrs: dict[str, Any] = {
                "tiered.cascade": record.cascade or "",
                "tiered.stage": call.stage,
                "tiered.cost_usd": call.cost_usd,
            }
            if call.stage in record.stages:
                attrs["tiered.stage.index"] = record.stages.index(call.stage)
            accepted, deferred = verdicts.get(call.stage, (0, 0))
            if call.error is not None:
                attrs["error.type"] = call.error
                outcome = "error"
            else:
                attrs["tiered.stage.accepted"] = accepted
                attrs["tiered.stage.deferred"] = deferred
                outcome = "accepted" if accepted and not deferred else "deferred"
                if accepted and deferred:
                    outcome = "mixed"
                elif not accepted and not deferred:
                    outcome = "unfinished"  # the request failed before the rule ran
            attrs["tiered.stage.outcome"] = outcome
            span = self.tracer.start_span(
                f"stage {call.stage}", context=ctx, attributes=attrs, start_time=call.start_ns
            )
            if call.error is not None:
                span.set_status(trace.Status(trace.StatusCode.ERROR, call.error))
            span.end(end_time=call.start_ns + int(call.seconds * 1e9))

    def shutdown(self) -> None:
        """Export what is still queued and stop."""
        self.provider.shutdown()


class TracingMiddleware:
    """Pure ASGI middleware: a :class:`RequestRecord` per ``/v1/*`` request, then its spans."""

    def __init__(self, app: ASGIApp, tracer: RequestTracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        record = RequestRecord(start_ns=time.time_ns())
        token = CURRENT_RECORD.set(record)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            CURRENT_RECORD.reset(token)
            try:
                self.tracer.record(scope, record, status)
            except Exception:  # tracing never fails a request
                logger.warning("could not record the request's spans", exc_info=True)


__all__ = [
    "CURRENT_RECORD",
    "RequestRecord",
    "RequestTracer",
    "TracingMiddleware",
    "traces_url",
]
