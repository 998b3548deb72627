"""The gateway with OpenAI-compatible stages that misbehave (in-memory transports): one
client's cancellation stays its own, the upstream's Retry-After reaches the client, an
over-reported usage is charged at most its reservation, the worst case comes from the
model."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.test_serve_unit import ME, Scripted, chat, make_gateway, stage
from tiered.core import AnswerBatch, Item, ModelTags
from tiered.models.llm import HttpRequest, HttpResponse, MockTransport, OpenAIChat
from tiered.serve import build_app
from tiered.serve.errors import BudgetDeniedError
from tiered.serve.serving_chat import OpenAIServingChat
from tiered.testing import chat_body

LLM: dict[str, Any] = {
    "model": "up",
    "api_key_env": None,
    "mode": "generate",
    "max_retries": 0,
    "cache": False,
}
MSG = {"model": "casc", "messages": [{"role": "user", "content": "the same question"}]}


def llm_gateway(handler: Any, **sections: Any) -> tuple[Any, OpenAIChat]:
    model = OpenAIChat(**LLM, transport=MockTransport(handler))
    gw = make_gateway({"llm": model}, [{"name": "casc", "stages": [stage("llm")]}], **sections)
    return gw, model


def test_a_cancelled_client_does_not_fail_identical_requests_of_others() -> None:
    upstream_calls: list[int] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        upstream_calls.append(1)
        await asyncio.sleep(0.2)
        return HttpResponse.from_json(chat_body("one answer for all"))

    gw, _ = llm_gateway(handler, server={"max_in_flight": 64})

    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=build_app(gw, close_on_shutdown=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            tasks = [
                asyncio.ensure_future(client.post("/v1/chat/completions", json=MSG))
                for _ in range(40)
            ]
            await asyncio.sleep(0.05)  # all 40 wait on the one shared upstream call
            tasks[0].cancel()  # the first client leaves
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], asyncio.CancelledError)
    statuses = [r.status_code for r in results[1:]]
    assert statuses == [200] * 39, statuses
    assert {r.json()["choices"][0]["message"]["content"] for r in results[1:]} == {
        "one answer for all"
    }
    assert len(upstream_calls) == 1
    assert gw.limiter.count == 0 and gw.budget.reserved("anonymous") == 0.0


def test_identical_requests_of_two_keys_are_not_joined() -> None:
    upstream_calls: list[int] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        upstream_calls.append(1)
        await asyncio.sleep(0.05)
        return HttpResponse.from_json(chat_body("answer"))

    gw, _ = llm_gateway(handler)
    gw.keys = type(gw.keys)({"sk-a": "alice", "sk-b": "bob"})
    serving = OpenAIServingChat(gw)

    async def main() -> None:
        alice, bob = gw.authenticate("Bearer sk-a"), gw.authenticate("Bearer sk-b")
        await asyncio.gather(
            *(
                serving.create_chat_completion(chat(text="same"), who, request_id=f"r{i}")
                for i, who in enumerate([alice, alice, bob])
            )
        )

    asyncio.run(main())
    assert len(upstream_calls) == 2


def test_a_cancellation_that_is_not_the_requests_own_is_a_502_not_a_500() -> None:
    gw = make_gateway(
        {"odd": Scripted("odd", error=asyncio.CancelledError())},
        [{"name": "casc", "stages": [stage("odd")]}],
    )
    with TestClient(build_app(gw)) as client:
        r = client.post("/v1/chat/completions", json=MSG)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"


def test_the_upstreams_retry_after_reaches_the_client() -> None:
    def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse.from_json({"error": {"message": "busy"}}, 429, {"retry-after": "7"})

    gw, _ = llm_gateway(handler)
    with TestClient(build_app(gw)) as client:
        r = client.post("/v1/chat/completions", json=MSG)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "upstream_rate_limited"


def test_over_reported_usage_is_charged_at_most_the_reservation() -> None:
    prices = {"usd_per_input_token": 1e-6, "usd_per_output_token": 1e-6}
    over = chat_body("fine", usage=(10**9, 10**9))  # $2,000 at these prices
    model = OpenAIChat(
        **LLM, prices=prices, transport=MockTransport(lambda r: HttpResponse.from_json(over))
    )
    gw = make_gateway(
        {"llm": model},
        [{"name": "casc", "stages": [stage("llm")]}],
        budgets={"default_usd": 0.03},
    )
    item = Item("x", [{"role": "user", "content": "the same question"}])
    worst = model.worst_case_cost([item])
    with TestClient(build_app(gw)) as client:
        r = client.post("/v1/chat/completions", json=MSG)
    assert r.status_code == 200
    assert 0 < float(r.headers["x-tiered-cost-usd"]) <= worst + 1e-12
    assert gw.budget.spent("anonymous") <= worst + 1e-12 < 0.03


class Priced:
    """A stage that knows its worst case (a PricedModel) and says so."""

    tags = ModelTags(generates_text=True)

    def __init__(self, worst: float) -> None:
        self.name = "priced"
        self.worst = worst
        self.seen: list[Item] = []

    def worst_case_cost(self, items: Sequence[Item]) -> float:
        return self.worst * len(items)

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.seen.extend(items)
        return AnswerBatch.from_labels(["ok"] * len(items), cost=0.01)


def test_the_reservation_is_the_models_own_worst_case() -> None:
    expensive, cheap = Priced(2.0), Priced(0.5)
    gw = make_gateway(
        {"expensive": expensive, "cheap": cheap},
        [
            {"name": "big", "stages": [stage("expensive")]},
            {"name": "small", "stages": [stage("cheap")]},
        ],
        budgets={"default_usd": 1.0},
    )
    serving = OpenAIServingChat(gw)
    with pytest.raises(BudgetDeniedError, match="could cost up to"):
        asyncio.run(serving.create_chat_completion(chat("big"), ME, request_id="a"))
    assert expensive.seen == []  # refused before the model ran
    served = asyncio.run(serving.create_chat_completion(chat("small"), ME, request_id="b"))
    assert served.body is not None and cheap.seen
    gw.close()
