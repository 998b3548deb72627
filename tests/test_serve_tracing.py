"""OpenTelemetry spans of the gateway, caught by the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tiered.errors import UpstreamError
from tiered.serve import Gateway, build_app
from tiered.serve.config import GatewayConfig, TracingSettings
from tiered.serve.tracing import RequestTracer, TracingMiddleware, traces_url

from .test_serve_unit import Scripted, two_stage

SECRET = "my-private-prompt-4711"
SETTINGS = TracingSettings(otlp_endpoint="http://127.0.0.1:4318", service_name="gw-test")


def traced(gw: Gateway) -> tuple[TestClient, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    gw.tracer = RequestTracer(SETTINGS, exporter=exporter)
    return TestClient(build_app(gw)), exporter


@pytest.fixture
def deferring() -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """A cascade whose cheap stage defers (low score) and whose big stage answers."""
    client, exporter = traced(two_stage(Scripted("small", conf=0.2), Scripted("big")))
    with client:
        yield client, exporter


def ask(client: TestClient, **extra: Any) -> Any:
    body = {"model": "casc", "messages": [{"role": "user", "content": SECRET}], **extra}
    return client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-1"})


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def values(spans: tuple[ReadableSpan, ...]) -> list[str]:
    return [str(v) for s in spans for v in (s.attributes or {}).values()] + [s.name for s in spans]


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_makes_a_request_span_and_one_span_per_stage_run(
    deferring: tuple[TestClient, InMemorySpanExporter], stream: bool
) -> None:
    client, exporter = deferring
    assert ask(client, stream=stream).status_code == 200
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    named = by_name(spans)
    request = named["POST /v1/chat/completions"]
    small, big = named["stage small"], named["stage big"]
    assert request.kind == SpanKind.SERVER and request.parent is None
    assert request.resource.attributes["service.name"] == "gw-test"
    attrs = dict(request.attributes or {})
    assert attrs["http.response.status_code"] == 200
    assert (attrs["tiered.cascade"], attrs["tiered.model"], attrs["tiered.stage"]) == (
        "casc",
        "casc",
        "big",
    )
    assert (attrs["tiered.request_id"], attrs["tiered.key"]) == ("req-1", "anonymous")
    assert attrs["tiered.cost_usd"] == pytest.approx(0.002)
    for span, index, outcome in ((small, 0, "deferred"), (big, 1, "accepted")):
        assert span.parent is not None and span.parent.span_id == request.context.span_id
        assert span.context.trace_id == request.context.trace_id
        a = dict(span.attributes or {})
        assert (a["tiered.stage.index"], a["tiered.stage.outcome"]) == (index, outcome)
        assert a["tiered.cost_usd"] == pytest.approx(0.001)
        assert a["tiered.stage.accepted"] == (index == 1)
        assert a["tiered.stage.deferred"] == (index == 0)
        assert request.start_time <= span.start_time <= span.end_time <= request.end_time
    assert not any(SECRET in v or "answer to" in v for v in values(spans))


def test_the_clients_traceparent_is_continued(
    deferring: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = deferring
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    body = {"model": "casc", "messages": [{"role": "user", "content": "hi"}]}
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    client.post("/v1/chat/completions", json=body, headers={"traceparent": parent})
    request = by_name(exporter.get_finished_spans())["POST /v1/chat/completions"]
    assert format(request.context.trace_id, "032x") == trace_id
    assert request.parent is not None and format(request.parent.span_id, "016x") == (
        "00f067aa0ba902b7"
    )


def test_a_failed_stage_and_request_are_error_spans() -> None:
    small = Scripted("small", error=UpstreamError("HTTP 500 " + SECRET, status=500))
    client, exporter = traced(two_stage(small, Scripted("big")))
    with client:
        assert ask(client).status_code == 502
    named = by_name(exporter.get_finished_spans())
    request, stage = named["POST /v1/chat/completions"], named["stage small"]
    assert request.status.status_code == StatusCode.ERROR
    assert dict(request.attributes or {})["error.type"] == "502"
    assert stage.status.status_code == StatusCode.ERROR
    a = dict(stage.attributes or {})
    assert (a["error.type"], a["tiered.stage.outcome"]) == ("UpstreamError", "error")
    assert "stage big" not in named
    assert not any(SECRET in v for v in values(exporter.get_finished_spans()))


def test_a_refused_request_has_a_request_span_and_no_stage_span(
    deferring: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = deferring
    assert client.post("/v1/chat/completions", json={"model": "nope", "messages": []}).is_error
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {})["http.response.status_code"] in (400, 404)
    assert span.status.status_code != StatusCode.ERROR  # a client's error, not the server's


def test_health_and_metrics_are_not_traced(
    deferring: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = deferring
    client.get("/health")
    client.get("/metrics")
    assert exporter.get_finished_spans() == ()


def test_a_tracing_section_builds_an_otlp_tracer_and_its_middleware() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "server": {"tracing": {"otlp_endpoint": "http://127.0.0.1:9/"}},
            "cascades": [
                {"name": "c", "stages": [{"name": "s", "model": {"kind": "hashed_ngram"}}]}
            ],
        }
    )
    gw = Gateway.from_config(cfg)
    try:
        assert gw.tracer is not None
        app = build_app(gw, close_on_shutdown=False)
        assert any(m.cls is TracingMiddleware for m in app.user_middleware)
    finally:
        gw.close()
    assert gw.tracer is None
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"


def test_without_tracing_nothing_of_opentelemetry_is_loaded_by_the_gateway() -> None:
    # fastapi itself imports opentelemetry's API; the SDK and exporter are ours to load
    script = textwrap.dedent(
        """
        import sys
        from fastapi.testclient import TestClient
        from tiered.serve import Gateway, build_app
        from tiered.serve.config import GatewayConfig
        from tiered.serve.tracing import TracingMiddleware
        cfg = GatewayConfig.model_validate({"cascades": [{"name": "c", "task": "classify",
            "stages": [{"name": "s", "model": {"kind": "hashed_ngram"}}]}]})
        gw = Gateway.from_config(cfg)
        app = build_app(gw)
        with TestClient(app) as client:
            r = client.post("/v1/classify", json={"model": "c", "input": "hello"})
            assert r.status_code == 200, r.text
        assert not any(m.cls is TracingMiddleware for m in app.user_middleware)
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")
                     or m.startswith("opentelemetry.exporter")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]"
