"""Fault injection: an OpenAIChat stage against the fake upstream (tiered.testing) when it
rate-limits, fails, hangs, closes mid-body, sends garbage, a huge body, a stream that
stops, or over-reports usage; identical calls shared per caller, cancellation contained;
what reaches the log."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tiered.core import Item
from tiered.errors import RateLimitError, UpstreamError, UpstreamTimeoutError
from tiered.models.llm import HttpRequest, HttpResponse, MockTransport, OpenAIChat, caller_scope
from tiered.testing import FakeUpstream, Reply, chat_body

GEN: dict[str, Any] = {
    "model": "fake",
    "api_key_env": None,
    "mode": "generate",
    "backoff_s": 0.001,
    "backoff_max_s": 0.01,
    "cache": False,
}
ITEM = [Item("1", "what is up")]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(answer="fine") as srv:
        yield srv


def ask(up: FakeUpstream, items: list[Item] = ITEM, **kw: Any) -> Any:
    m = OpenAIChat(**{**GEN, "base_url": up.base_url, **kw})
    try:
        return m.predict(items)
    finally:
        m.close()


def test_429_with_retry_after_is_retried_then_carried_on_the_error(up: FakeUpstream) -> None:
    up.then(Reply.rate_limited(0))
    assert ask(up).labels == ["fine"] and up.calls == 2
    up.then(Reply.rate_limited(9), Reply.rate_limited(9))
    with pytest.raises(RateLimitError) as info:
        ask(up, max_retries=1, backoff_max_s=0.0)  # the wait is capped by backoff_max_s
    assert info.value.retry_after_s == 9.0 and info.value.status == 429


def test_5xx_is_retried_and_a_persistent_one_raises(up: FakeUpstream) -> None:
    up.then(Reply.error(500), Reply.error(503))
    assert ask(up).labels == ["fine"] and up.calls == 3
    up.then(*[Reply.error(502)] * 2)
    with pytest.raises(UpstreamError, match=r"HTTP 502.*after 2 attempts") as info:
        ask(up, max_retries=1)
    assert info.value.status == 502 and info.value.retryable


def test_a_hanging_upstream_times_out(up: FakeUpstream) -> None:
    up.then(Reply.hanging(), Reply.hanging())
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeoutError):
        ask(up, timeout_s=0.2, max_retries=1)
    assert time.monotonic() - t0 < 10  # two attempts of 0.2 s, not forever


def test_a_body_cut_short_is_retried_then_raised_from_aiohttp(up: FakeUpstream) -> None:
    up.then(Reply.cut())
    assert ask(up).labels == ["fine"]
    up.then(Reply.cut(), Reply.cut())
    with pytest.raises(UpstreamError, match="cut-short") as info:
        ask(up, max_retries=1)
    assert isinstance(info.value.__cause__, aiohttp.ClientPayloadError)


def test_malformed_json_and_a_stream_that_stops_are_upstream_errors(up: FakeUpstream) -> None:
    up.then(Reply.malformed())
    with pytest.raises(UpstreamError, match="malformed"):
        ask(up, max_retries=0)
    up.then(Reply.sse_stop(1))
    with pytest.raises(UpstreamError, match="malformed"):
        ask(up, max_retries=0)


def test_a_huge_body_is_refused_with_bounded_memory(up: FakeUpstream) -> None:
    up.then(Reply.huge(64 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamError, match="larger than the limit") as info:
            ask(up, max_response_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not info.value.retryable and up.calls == 1
    assert peak < 16 * 1024 * 1024  # a 64 MiB body was never held
    # a body under the limit, padded, is read whole
    up.then(Reply.huge(300_000))
    assert ask(up, max_response_bytes=1024 * 1024).labels == ["fine"]


def test_over_reported_usage_is_charged_at_the_worst_case(
    up: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
    up.then(Reply.over_usage(10**9))
    m = OpenAIChat(**{**GEN, "base_url": up.base_url}, prices=prices, max_usd=0.03)
    try:
        worst = m.worst_case_cost(ITEM)
        with caplog.at_level(logging.WARNING):
            a = m.predict(ITEM)
    finally:
        m.close()
    assert a.cost[0] == pytest.approx(worst) and worst < 0.03
    assert m.budget.spent_usd == pytest.approx(worst)
    assert "above its reservation" in caplog.text


def test_retry_log_lines_hold_no_prompt_or_upstream_text(
    up: FakeUpstream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "my-private-question-42"
    monkeypatch.setenv("FAULT_KEY", "sk-fault-key-123")
    echo = Reply.error(500, f"cannot answer {secret} for key sk-fault-key-123")
    up.then(echo)
    with caplog.at_level(logging.INFO):
        ask(up, [Item("1", secret)], api_key_env="FAULT_KEY")
    assert "retrying fake" in caplog.text and "HTTP 500" in caplog.text
    assert secret not in caplog.text
    caplog.clear()
    up.then(echo)
    with caplog.at_level(logging.DEBUG):
        ask(up, [Item("1", secret)], api_key_env="FAULT_KEY")
    assert secret in caplog.text  # debug logging may show the upstream's words...
    assert "sk-fault-key-123" not in caplog.text  # ...never the key


# ------------------------------------------------------------------ shared calls


def _slow_handler(calls: list[str]) -> Any:
    async def handler(request: HttpRequest) -> HttpResponse:
        calls.append(request.json()["messages"][-1]["content"])
        await asyncio.sleep(0.05)
        return HttpResponse.from_json(chat_body("shared answer"))

    return handler


def test_identical_calls_are_shared_only_within_one_caller() -> None:
    calls: list[str] = []
    m = OpenAIChat(**GEN, transport=MockTransport(_slow_handler(calls)))

    async def one(caller: str) -> list[str | None]:
        with caller_scope(caller):
            return (await m.apredict(ITEM)).labels

    async def main() -> list[list[str | None]]:
        return await asyncio.gather(one("alice"), one("alice"), one("bob"))

    assert asyncio.run(main()) == [["shared answer"]] * 3
    assert len(calls) == 2  # alice's two calls went once; bob's went on its own


def test_a_cancelled_caller_never_cancels_the_others() -> None:
    calls: list[str] = []
    m = OpenAIChat(**GEN, transport=MockTransport(_slow_handler(calls)))

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(m.apredict(ITEM)) for _ in range(40)]
        await asyncio.sleep(0.01)  # every call is waiting on the one upstream call
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], asyncio.CancelledError)
    assert [r.labels for r in results[1:]] == [["shared answer"]] * 39
    assert len(calls) == 1


def test_a_shared_call_nobody_waits_for_is_cancelled() -> None:
    started, finished = [], []

    async def handler(request: HttpRequest) -> HttpResponse:
        started.append(1)
        await asyncio.sleep(5)
        finished.append(1)
        return HttpResponse.from_json(chat_body("late"))

    m = OpenAIChat(**GEN, transport=MockTransport(handler))

    async def main() -> None:
        task = asyncio.ensure_future(m.apredict(ITEM))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.01)

    t0 = time.monotonic()
    asyncio.run(main())
    assert started == [1] and finished == [] and time.monotonic() - t0 < 4
    assert m.budget.reserved_usd == 0.0
