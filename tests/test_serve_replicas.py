"""Gateway replicas sharing one Redis (``server.shared``): one budget, one cache, one learner.

The budget race runs two real ``tiered serve`` processes against a real redis-server and
the fake upstream; the ledgers, the cache and the online sharing are also checked
in-process, where each step can be looked at.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tiered.errors import BudgetExceededError, ConfigError, StoreError
from tiered.models.llm import Budget
from tiered.serve import Gateway, load_gateway_config
from tiered.serve.auth import Principal
from tiered.serve.config import GatewayConfig
from tiered.serve.errors import SharedStateError, error_response
from tiered.serve.protocol import ChatCompletionRequest, ClassifyRequest
from tiered.serve.serving_chat import OpenAIServingChat
from tiered.serve.serving_classify import OpenAIServingClassify
from tiered.store.ledger import Ledger, MemoryLedger
from tiered.store.redis_cache import RedisResponseCache
from tiered.store.redis_shared import parse_shared_url
from tiered.store.redis_spend import RedisLedger
from tiered.testing import FakeUpstream

from .test_serve_e2e import launch
from .test_serve_unit import ME, ONLINE, TEXTS, CountingExpert, Memorizer, Scripted, stage

PRICE = 2.0**-10  # USD per call: binary-exact, so sums of it are exact too
BUDGET = 20 * PRICE


# --------------------------------------------------------------------------- ledgers


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    url: str = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url, decode_responses=True)
    yield RedisLedger(client, "t", hold_ttl_s=60)
    client.close()


def test_both_ledgers_hold_the_one_budgets_rules(ledger: Ledger) -> None:
    assert isinstance(ledger, Ledger)
    b = Budget(1.0, per_account={"alice": 0.1}, ledger=ledger)
    held = [b.reserve(0.04, account="alice") for _ in range(2)]
    with pytest.raises(BudgetExceededError, match=r"\$0\.08 in flight.*budget of 'alice'"):
        b.reserve(0.04, account="alice")
    assert b.reserved("alice") == pytest.approx(0.08)
    bob = b.reserve(0.9, account="bob")  # bob's cap is the default, and his own
    assert b.settle(held[0], 0.05) == pytest.approx(0.04)  # capped by the reservation
    assert b.settle(held[0], 0.05) == 0.0  # settled once, whatever path ends the call
    b.release(held[1])
    b.release(bob)
    assert b.spent("alice") == pytest.approx(0.04) and b.reserved("alice") == 0.0
    assert b.spent_usd == pytest.approx(0.04) and b.reserved_usd == 0.0
    unlimited = Budget(None, ledger=ledger)
    unlimited.settle(unlimited.reserve(5.0, account="carol"), 5.0)
    assert unlimited.spent("carol") == 5.0


def test_redis_reservations_are_atomic_across_clients(redis_url: str) -> None:
    clients = [redis.Redis.from_url(redis_url, decode_responses=True) for _ in range(4)]
    budgets = [Budget(BUDGET, ledger=RedisLedger(c, "race", hold_ttl_s=60)) for c in clients]
    granted: list[int] = []

    def spend(b: Budget) -> None:
        for _ in range(30):
            try:
                r = b.reserve(PRICE, account="k")
            except BudgetExceededError:
                continue
            granted.append(1)
            b.settle(r, PRICE)

    threads = [threading.Thread(target=spend, args=(b,)) for b in budgets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 20  # 120 tries, four clients: exactly the budget, never more
    assert budgets[0].spent("k") == BUDGET and budgets[1].reserved("k") == 0.0
    for c in clients:
        c.close()


def test_a_dead_replicas_reservation_expires(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    dead = Budget(1.0, ledger=RedisLedger(client, "t", hold_ttl_s=0.05))
    orphan = dead.reserve(1.0, account="k")  # its process dies before settling
    live = Budget(1.0, ledger=RedisLedger(client, "t", hold_ttl_s=60))
    asyncio.run(asyncio.sleep(0.1))
    assert live.reserved("k") == 0.0  # dropped once expired
    r = live.reserve(0.7, account="k")
    with caplog.at_level(logging.WARNING):
        assert dead.settle(orphan, 0.2) == pytest.approx(0.2)  # it was spent: it counts
    assert "had expired" in caplog.text
    live.settle(r, 0.7)
    assert live.spent("k") == pytest.approx(0.9) and live.reserved("k") == 0.0
    client.close()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://h:6379/0", "not a Redis URL"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h:6379/streams", "the path is the database number"),
        ("redis://h:6379/0?group=g", "unknown parameter 'group'"),
        ("redis://h:6379/0?cache_ttl=0", "'cache_ttl' must be a whole number >= 1"),
        ("redis://h:6379/0?snapshot_every=soon", "'snapshot_every' must be a number"),
    ],
)
def test_a_bad_shared_url_names_the_file_line_and_field(
    tmp_path: Path, url: str, match: str
) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"server:\n  shared: '{url}'\n"
        "cascades:\n  - name: a\n    stages: [{name: s, model: {kind: x}}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=match) as info:
        load_gateway_config(cfg)
    assert info.value.field == "server.shared" and info.value.line == 2


def test_shared_and_store_are_one_or_the_other(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "server:\n  store: gw.db\n  shared: redis://h/0\n"
        "cascades:\n  - name: a\n    stages: [{name: s, model: {kind: x}}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"either 'store'.*or 'shared'") as info:
        load_gateway_config(cfg)
    assert info.value.field == "server"
    u = parse_shared_url("rediss://me:secret@h:7000/3?prefix=bot&cache_ttl=60")
    assert (u.db, u.prefix, u.cache_ttl_s, u.key("cache")) == (3, "bot", 60, "bot:cache")
    assert "secret" not in str(u) + repr(u)


def test_an_unreachable_shared_redis_stops_the_gateway_at_start() -> None:
    cfg = GatewayConfig.model_validate(
        {
            "server": {"shared": "redis://127.0.0.1:1/0"},
            "cascades": [{"name": "a", "stages": [stage("small")]}],
        }
    )
    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        Gateway.from_config(cfg, resources={"fakes": {"small": Scripted("small")}})


# --------------------------------------------------------------------------- the cache


def test_the_redis_cache_expires_entries_and_skips_large_ones(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    cache = RedisResponseCache(client, "t", ttl_s=30, max_bytes=400)
    put = {"base_url": "u", "request": {}, "tokens_in": 3, "tokens_out": None, "usd": 0.5}
    cache.put("k1", response={"text": "hi"}, latency_ms=7.0, **put)
    cache.put("k2", response={"text": "x" * 500}, latency_ms=7.0, **put)
    hit = cache.get("k1")
    assert hit is not None and hit.response == {"text": "hi"} and hit.usd == 0.5
    assert hit.tokens_in == 3 and hit.tokens_out is None
    assert 0 < client.ttl("t:cache:k1") <= 30
    assert cache.get("k2") is None and cache.too_large == 1
    client.set("t:cache:k3", "not an entry")
    assert cache.get("k3") is None  # something else's value is a miss, not a crash
    assert (cache.hits, cache.misses) == (1, 2)
    client.close()


def test_a_failing_redis_cache_is_a_miss_not_an_error() -> None:
    no_retry = Retry(NoBackoff(), 0)
    client = redis.Redis(port=1, retry=no_retry, decode_responses=True)
    cache = RedisResponseCache(client, "t")
    assert cache.get("k") is None and cache.errors == 1
    cache.put("k", base_url="u", request={}, response={}, tokens_in=1, tokens_out=1, usd=0.0,
              latency_ms=1.0)  # fmt: skip
    assert cache.errors == 2


# --------------------------------------------------------------------------- in-process replicas


def replica(shared: str, memo: Memorizer, **server: Any) -> Gateway:
    cfg = GatewayConfig.model_validate(
        {
            "server": {"shared": shared, **server},
            "budgets": {"default_usd": 10.0},
            "cascades": [
                {"name": "sent", "task": "classify", "online": ONLINE,
                 "stages": [stage("memo"), stage("expert")]},
            ],
        }
    )  # fmt: skip
    return Gateway.from_config(cfg, resources={"fakes": {"memo": memo, "expert": CountingExpert()}})


def classify(gw: Gateway, texts: list[str], per_request: int) -> list[Any]:
    serving = OpenAIServingClassify(gw)

    async def go() -> list[Any]:
        return await asyncio.gather(
            *(
                serving.create_classification(
                    ClassifyRequest(model="sent", input=texts[i : i + per_request]),
                    ME,
                    request_id=f"r{i}",
                )
                for i in range(0, len(texts), per_request)
            )
        )

    return asyncio.run(go())


def test_online_replicas_share_labels_counts_and_snapshots(redis_url: str) -> None:
    shared = f"{redis_url}/0?prefix=gw"
    memo_a, memo_b = Memorizer(), Memorizer()
    a, b = replica(shared, memo_a), replica(shared, memo_b)
    sent_a, sent_b = a.cascades["sent"], b.cascades["sent"]
    classify(a, TEXTS, per_request=6)
    assert sent_a.fleet.labels_shared > 0 and memo_a.known
    classify(b, ["a good start", "a bad end"], per_request=2)
    # b learned what a's expert said, without calling its own expert for it
    assert sent_b.fleet.labels_received == sent_a.fleet.labels_shared
    assert memo_b.known.items() >= memo_a.known.items()
    # the audit counts are the replicas': b's meter holds both replicas' answers
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    counts = {k: int(v) for k, v in client.hgetall("gw:online:sent:fleet").items()}
    assert sum(v for k, v in counts.items() if k.startswith("stage:")) == len(TEXTS) + 2
    assert int(sent_b.learner.meter.total_stage.sum()) == len(TEXTS) + 2
    assert sent_b.learner.n_items == 2  # b's own steps
    # both replicas spent against one budget
    spent = a.budget.spent("anonymous")
    assert spent == pytest.approx(b.budget.spent("anonymous")) and spent > 0
    assert spent == pytest.approx(float(client.hget("gw:budget:spent", "anonymous") or 0))
    a.close()  # leaves a snapshot
    assert client.exists("gw:online:sent:snapshot")
    memo_c = Memorizer()
    c = replica(shared, memo_c)  # a new replica starts from it, not cold
    assert c.cascades["sent"].fleet.from_snapshot == sent_a.fleet.worker
    assert c.cascades["sent"].learner.n_items == len(TEXTS)
    assert memo_c.known == memo_a.known
    b.close()
    c.close()
    client.close()


def test_a_request_the_shared_budget_cannot_reserve_is_a_503(redis_url: str) -> None:
    gw = replica(f"{redis_url}/0", Memorizer())
    budget = gw.budget
    assert isinstance(budget.ledger, RedisLedger)

    def down(**kw: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    budget.ledger._reserve = down  # type: ignore[method-assign]
    serving = OpenAIServingClassify(gw)
    with pytest.raises(SharedStateError) as info:
        asyncio.run(
            serving.create_classification(
                ClassifyRequest(model="sent", input="x"), ME, request_id="r"
            )
        )
    status, body, headers = error_response(info.value)
    assert status == 503 and body.error.code == "shared_state_unavailable"
    assert headers["retry-after"] == "1"
    assert gw.cascades["sent"].learner.n_items == 0  # nothing ran unchecked
    gw.close()


# --------------------------------------------------------------------------- real replicas

REPLICA_KEYS = "poor:sk-replica-poor,rich:sk-replica-rich"


def llm(model: str, cache: bool) -> str:
    return (
        f"{{kind: openai, base_url: '{{URL}}', model: {model}, mode: generate, "
        f"api_key_env: null, max_retries: 0, cache: {str(cache).lower()}, "
        f"prices: {{usd_per_request: {PRICE!r}}}}}"
    )


REPLICA_CONFIG = f"""
server:
  shared: '{{REDIS}}/0?prefix=replicas'
  response_cache: true
  max_in_flight: 512
auth:
  keys_env: TIERED_REPLICA_KEYS
budgets:
  per_key: {{poor: {BUDGET!r}}}
cascades:
  - name: paid
    stages:
      - {{name: llm, model: {llm("slow-150", cache=False)}}}
  - name: cached
    stages:
      - {{name: llm, model: {llm("fake", cache=True)}}}
"""


@pytest.fixture(scope="module")
def replicas(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[str], FakeUpstream]]:
    """Two ``tiered serve`` processes on one Redis and one fake upstream."""
    tmp = tmp_path_factory.mktemp("replicas")
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    with FakeUpstream(record=False) as upstream:
        cfg = tmp / "gateway.yaml"
        text = REPLICA_CONFIG.replace("{URL}", upstream.base_url).replace("{REDIS}", redis_server)
        cfg.write_text(text, encoding="utf-8")
        env = {"TIERED_REPLICA_KEYS": REPLICA_KEYS}
        with ThreadPoolExecutor(2) as pool:
            started = list(
                pool.map(lambda i: launch(cfg, tmp / f"r{i}.log", env, timeout_s=45), range(2))
            )
        try:
            yield [base for _, base in started], upstream
        finally:
            for proc, _ in started:
                proc.terminate()
            for proc, _ in started:
                proc.wait(20)


def post_all(bases: list[str], key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Every body at once, alternating between the replicas."""
    headers = {"authorization": f"Bearer {key}"}

    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as c:
            return await asyncio.gather(
                *(
                    c.post(f"{bases[i % len(bases)]}/v1/chat/completions", json=body)
                    for i, body in enumerate(bodies)
                )
            )

    return asyncio.run(go())


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@pytest.mark.slow
def test_budget_race_two_replicas_never_pass_the_budget(
    replicas: tuple[list[str], FakeUpstream], redis_server: str
) -> None:
    bases, upstream = replicas
    before = upstream.calls
    out = post_all(bases, "sk-replica-poor", [chat("paid", f"q{i:04d}") for i in range(400)])
    ok = [r for r in out if r.status_code == 200]
    denied = [r for r in out if r.status_code != 200]
    # each call costs exactly its reservation, so the budget buys exactly 20 answers
    assert len(ok) == 20 and upstream.calls - before == 20
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    assert float(client.hget("replicas:budget:spent", "poor") or 0) == BUDGET
    assert float(client.hget("replicas:budget:held", "poor") or 0) == 0.0
    assert sum(float(r.headers["x-tiered-cost-usd"]) for r in ok) == BUDGET
    client.close()
    for r in denied:  # the gateway's clean budget error, never a 5xx
        assert r.status_code == 402, r.text
        err = r.json()["error"]
        assert err["code"] == "budget_exceeded" and "budget of 'poor'" in err["message"]


@pytest.mark.slow
def test_a_response_paid_for_on_one_replica_is_a_cache_hit_on_the_other(
    replicas: tuple[list[str], FakeUpstream],
) -> None:
    (a, b), upstream = replicas
    first = post_all([a], "sk-replica-rich", [chat("cached", "tell me once")])[0]
    calls = upstream.calls
    again = post_all([b], "sk-replica-rich", [chat("cached", "tell me once")])[0]
    assert first.status_code == again.status_code == 200
    assert float(first.headers["x-tiered-cost-usd"]) == PRICE
    assert float(again.headers["x-tiered-cost-usd"]) == 0.0  # served from the shared cache
    assert upstream.calls == calls
    texts = [r.json()["choices"][0]["message"]["content"] for r in (first, again)]
    assert texts == ["echo: tell me once"] * 2


def test_the_replica_example_runs_on_a_shared_redis(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "replica-gateway.yaml"
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    assert parse_shared_url(data["server"]["shared"]).prefix == "team-gateway"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    monkeypatch.setenv("TIERED_GATEWAY_KEYS", "alice:sk-team-alice")
    answer = lambda body: "positive" if "loved" in str(body) else "negative"  # noqa: E731
    with FakeUpstream(answer=answer, labels=["positive", "negative"]) as upstream:
        data["server"]["shared"] = f"{redis_url}/0?prefix=team-gateway"
        for entry in data["cascades"]:
            for s in entry["stages"]:
                if s["model"]["kind"] == "openai":
                    s["model"]["base_url"] = upstream.base_url
        path = tmp_path / "replica.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        replicas = [Gateway.from_config(load_gateway_config(path)) for _ in range(2)]
        alice = Principal("alice")

        async def ask(gw: Gateway, model: str, text: str) -> Any:
            if model == "sentiment":
                req = ClassifyRequest(model=model, input=text)
                return await OpenAIServingClassify(gw).create_classification(
                    req, alice, request_id="r"
                )
            chat_req = ChatCompletionRequest(
                model=model, messages=[{"role": "user", "content": text}]
            )
            return await OpenAIServingChat(gw).create_chat_completion(
                chat_req, alice, request_id="r"
            )

        got = asyncio.run(ask(replicas[0], "sentiment", "I loved it"))
        assert got.body.data[0].label == "positive"
        asyncio.run(ask(replicas[0], "assistant", "hello"))
        calls = upstream.calls
        asyncio.run(ask(replicas[1], "assistant", "hello"))  # the other replica's cache
        assert upstream.calls == calls
        spent = [gw.budget.spent("alice") for gw in replicas]
        assert spent[0] == spent[1] > 0
        for gw in replicas:
            gw.close()
