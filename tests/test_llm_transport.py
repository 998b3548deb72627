"""The LLM transport: every aiohttp exception maps to a tiered error, the in-memory mock
transport drives a stage without a network, the one budget, the normaliser registry."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import ssl
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from tiered.core import Item, build_model
from tiered.errors import (
    BudgetExceededError,
    ConfigError,
    RateLimitError,
    TieredError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tiered.models.llm import (
    AiohttpTransport,
    Budget,
    HttpRequest,
    HttpResponse,
    MockTransport,
    OpenAIChat,
    register_normalizer,
)
from tiered.models.llm import transport as transport_module
from tiered.models.llm.transport import (
    aiohttp_exception_classes,
    map_http_status,
    map_transport_error,
    parse_retry_after,
    proxy_for,
)
from tiered.testing import chat_body

# ------------------------------------------------------------------ aiohttp errors

_REQUEST_INFO = aiohttp.RequestInfo(URL("http://x/v1"), "POST", CIMultiDict(), URL("http://x/v1"))
_KEY = aiohttp.client_reqrep.ConnectionKey("x", 80, False, True, None, None, None)
_ARGS: dict[str, Any] = {
    "request_info": _REQUEST_INFO,
    "history": (),
    "connection_key": _KEY,
    "os_error": OSError(111, "refused"),
    "certificate_error": ssl.CertificateError("bad certificate"),
    "expected": b"a",
    "got": b"b",
    "host": "x",
    "port": 80,
    "url": "http://x/v1",
    "path": "/tmp/sock",
    "line": "HTTP/1.1 ???",
    "hdr": "bad header",
    "message": "boom",
    "code": 400,
}


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance of an aiohttp exception class, its constructor's arguments made up."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            args.append("boom")
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            args.append(_ARGS[p.name])
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            kwargs[p.name] = _ARGS[p.name]
    if issubclass(cls, aiohttp.ClientResponseError):
        kwargs["status"] = 503
    return cls(*args, **kwargs)


def test_every_aiohttp_exception_class_is_in_the_mapping_table() -> None:
    classes = aiohttp_exception_classes()
    assert aiohttp.ClientError in classes and aiohttp.ClientPayloadError in classes
    assert len(classes) > 30  # the walk found the hierarchy, not just a few names
    table = transport_module._kind_table()
    unmapped = [c.__qualname__ for c in classes if c not in table]
    assert unmapped == [], f"aiohttp exceptions without a tiered mapping: {unmapped}"


@pytest.mark.parametrize("cls", aiohttp_exception_classes(), ids=lambda c: c.__name__)
def test_each_aiohttp_exception_becomes_a_tiered_error_from_the_original(
    cls: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    exc = _instance(cls)

    class Failing:
        async def __aenter__(self) -> None:
            raise exc

        async def __aexit__(self, *a: object) -> None:
            return None

    monkeypatch.setattr(aiohttp.ClientSession, "request", lambda self, *a, **k: Failing())

    async def send() -> None:
        t = AiohttpTransport("http://127.0.0.1:9/v1", api_key="sk-secret-key")
        try:
            await t.send(HttpRequest.post_json("/chat/completions", {}))
        finally:
            await t.aclose()

    with pytest.raises(UpstreamError) as info:
        asyncio.run(send())
    err = info.value
    assert isinstance(err, TieredError) and err.__cause__ is exc
    assert "sk-secret-key" not in str(err)
    if issubclass(cls, TimeoutError):
        assert type(err) is UpstreamTimeoutError and err.retryable
    if issubclass(cls, aiohttp.ClientResponseError):
        assert err.status == 503 and err.retryable
    if issubclass(cls, ssl.SSLError | aiohttp.InvalidURL):
        assert not err.retryable  # retrying cannot help


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    when = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)
    now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == 30.0


def test_error_mapping_by_status_and_failure() -> None:
    cases = [
        (429, RateLimitError, True),
        (503, UpstreamError, True),
        (502, UpstreamError, True),
        (408, UpstreamError, True),
        (401, UpstreamError, False),
        (404, UpstreamError, False),
        (418, UpstreamError, False),
    ]
    for status, cls, retryable in cases:
        err = map_http_status(status, b'{"error": {"message": "why"}}', where="m")
        assert type(err) is cls and err.retryable is retryable and err.status == status
        assert str(err) == f"m: HTTP {status}: why"
    assert "plain text" in str(map_http_status(500, b"plain text"))
    timeout = map_transport_error(TimeoutError())
    assert type(timeout) is UpstreamTimeoutError and timeout.retryable
    refused = map_transport_error(aiohttp.ClientConnectionError("refused"))
    assert type(refused) is UpstreamError and refused.retryable
    masked = map_http_status(401, b"key sk-SECRET123 rejected", secrets=["sk-SECRET123"])
    assert "sk-SECRET123" not in str(masked) and "***" in str(masked)


def test_the_proxy_comes_from_the_environment_except_for_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "bypassed.example")
    assert proxy_for("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert proxy_for("https://bypassed.example/v1") is None
    assert proxy_for("http://127.0.0.1:8080/v1") is None
    assert proxy_for("http://localhost:8080/v1") is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert proxy_for("https://api.example.com/v1") is None


# ------------------------------------------------------------------ the mock transport

SENT: dict[str, Any] = {
    "model": "m",
    "api_key_env": None,
    "labels": ["yes", "no"],
    "backoff_s": 0.0,
    "backoff_max_s": 0.0,
}


def test_mock_transport_answers_a_stage_without_a_network() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        body = request.json()
        word = "yes" if "sunny" in body["messages"][0]["content"] else "no"
        return HttpResponse.from_json(chat_body(word, [(word, -0.1, {word: -0.1})]))

    mock = MockTransport(handler)
    m = OpenAIChat(**SENT, transport=mock)
    try:
        a = m.predict([Item("1", "a sunny day"), Item("2", "rain")])
    finally:
        m.close()
    assert a.labels == ["yes", "no"]
    assert [r.path for r in mock.requests] == ["/chat/completions"] * 2
    assert all(r.method == "POST" for r in mock.requests)


def test_a_429_carries_the_upstreams_retry_after() -> None:
    def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse.from_json({"error": {"message": "slow"}}, 429, {"Retry-After": "7"})

    m = OpenAIChat(**SENT, max_retries=0, transport=MockTransport(handler))
    with pytest.raises(RateLimitError) as info:
        m.predict([Item("1", "x")])
    m.close()
    assert info.value.retry_after_s == 7.0 and info.value.status == 429


def test_retry_waits_at_least_what_the_upstream_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    replies = iter(
        [
            HttpResponse.from_json({}, 429, {"retry-after": "3"}),
            HttpResponse.from_json(chat_body("yes")),
        ]
    )
    m = OpenAIChat(
        **{**SENT, "backoff_max_s": 10.0}, transport=MockTransport(lambda r: next(replies))
    )
    monkeypatch.setattr(asyncio, "sleep", sleep)
    assert asyncio.run(m.apredict([Item("1", "x")])).labels == ["yes"]
    assert waits == [3.0]


def test_a_response_that_nests_too_deep_is_malformed_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    m = OpenAIChat(
        **SENT, max_retries=0, transport=MockTransport(lambda r: HttpResponse(200, deep))
    )
    with pytest.raises(UpstreamError, match="malformed"):
        asyncio.run(m.apredict([Item("1", "x")]))


# ------------------------------------------------------------------ one budget


def test_a_charge_is_capped_by_its_reservation_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    b = Budget(0.03)
    r = b.reserve(0.01)
    with caplog.at_level(logging.WARNING):
        charged = b.settle(r, 10.0)  # an upstream that over-reports
    assert charged == pytest.approx(0.01) and b.spent() == pytest.approx(0.01)
    assert "above its reservation" in caplog.text
    loose = b.reserve(0.0, bounded=False)  # an estimate, not a bound: charged as reported
    assert b.settle(loose, 0.015) == pytest.approx(0.015)
    assert b.remaining() == pytest.approx(0.005)


def test_budget_accounts_have_their_own_caps_and_reservations_settle_atomically() -> None:
    b = Budget(1.0, per_account={"alice": 0.1})
    held = [b.reserve(0.04, account="alice") for _ in range(2)]
    with pytest.raises(BudgetExceededError, match="budget of 'alice'"):
        b.reserve(0.04, account="alice")
    b.reserve(0.9, account="bob")  # bob's cap is the default, and his own
    for r in held:
        b.settle(r, 0.05)  # charged 0.04 each: the reservation caps it
    assert b.spent("alice") == pytest.approx(0.08) and b.reserved("alice") == 0.0
    with pytest.raises(ValueError):
        b.reserve(math.nan)


def test_stage_charges_never_pass_the_cap_when_usage_is_over_reported() -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
    body = chat_body("yes", usage=(10**9, 10**9))
    m = OpenAIChat(
        **SENT,
        prices=prices,
        max_usd=0.03,
        transport=MockTransport(lambda r: HttpResponse.from_json(body)),
    )
    worst = m.worst_case_cost([Item("1", "x")])
    a = asyncio.run(m.apredict([Item("1", "x")]))
    assert a.cost[0] == pytest.approx(worst) and worst < 0.03
    assert m.budget.spent_usd == pytest.approx(worst)


# ------------------------------------------------------------------ normalisers


@pytest.mark.parametrize("name", ["os:system", "math:floor", "builtins:eval", "nope"])
def test_a_normalizer_comes_only_from_the_registry(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown normalizer") as info:
        build_model(
            {"kind": "openai", **SENT, "mode": "generate", "labels": [], "normalizer": name}
        )
    assert info.value.field is not None and "normalizer" in info.value.field


def test_a_registered_normalizer_can_be_named() -> None:
    @register_normalizer("test-upper")
    def upper(text: str) -> str | None:
        return text.strip().upper() or None

    m = OpenAIChat(
        **{**SENT, "mode": "generate", "labels": [], "normalizer": "test-upper"},
        transport=MockTransport(lambda r: HttpResponse.from_json(chat_body(" ok "))),
    )
    assert asyncio.run(m.apredict([Item("1", "x")])).labels == ["OK"]
