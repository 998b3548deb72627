"""Many workers, one cascade: shared audit counts, shared labels, snapshots (real Redis)."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from tiered.core import FixedCost, Item, Stage
from tiered.core.spec import build_model
from tiered.io.redis_streams import RedisStreamSink
from tiered.io.sinks import decision_row
from tiered.online import OnlineCascade, OnlineConfig, OnlineDecision
from tiered.online.fleet import Fleet, FleetKeys, tally_row

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}


@pytest.fixture
def clients(redis_url: str) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    text = redis.Redis.from_url(redis_url, decode_responses=True)
    raw = redis.Redis.from_url(redis_url)
    yield text, raw
    text.close()
    raw.close()


def cascade(target: float = 0.9) -> OnlineCascade:
    cheap = Stage("ngram", build_model({"kind": "hashed_ngram"}))
    expert = Stage(
        "expert",
        build_model({"kind": "label_column", "field": "label"}),
        cost=FixedCost(usd_per_call=0.001),
    )
    config = OnlineConfig(target_agreement=target, warmup=40, refit_every=20, audit_rate=0.2)
    return OnlineCascade([cheap], expert, config, seed=0)


def items(n: int, seed: int, prefix: str) -> list[Item]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = rng.choice(["pos", "neg"])
        text = " ".join(rng.choice(WORDS[label]) for _ in range(4))
        out.append(Item(id=f"{prefix}{i}", input=text, fields={"label": label}))
    return out


class Worker:
    """A cascade, its fleet share and its output sink, as a run wires them."""

    def __init__(self, name: str, clients: tuple[redis.Redis, redis.Redis], **kw: Any) -> None:
        text, raw = clients
        self.cascade = cascade()
        self.fleet = Fleet(text, raw, "out", name, "cfg-1", **kw)
        self.sink = RedisStreamSink(
            text,
            "out",
            "out:done",
            tally=self.fleet.tally,
            tally_key=self.fleet.keys.counters,
            on_totals=self.fleet.on_totals,
        )

    def answer(self, batch: list[Item]) -> list[OnlineDecision]:
        decisions = self.cascade.process(batch)
        rows = [
            decision_row(
                d.id, d.label, d.stage, d.confidence, d.cost, d.audited, d.expert_label,
                d.cheap_label,
            )
            for d in decisions
        ]  # fmt: skip
        self.sink.write(rows, None)
        self.fleet.after_batch(batch, decisions)
        return decisions


def started(clients: tuple[redis.Redis, redis.Redis], **b_kw: Any) -> tuple[Worker, Worker]:
    """Workers ``a`` and ``b`` of one fleet, both started cold."""
    a, b = Worker("a", clients), Worker("b", clients, **b_kw)
    a.fleet.start(a.cascade, resumed=False)
    b.fleet.start(b.cascade, resumed=False)
    return a, b


def test_tally_counts_a_row_as_the_audit_meter_does() -> None:
    def row(**kw: object) -> dict[str, object]:
        return decision_row("x", "a", **kw)  # type: ignore[arg-type]

    cheap = row(stage="ngram", confidence=0.9, cost=0.0, audited=False, expert_label=None)
    assert tally_row(cheap) == [("stage:ngram", 1)]
    sent_up = row(stage="expert", confidence=1.0, cost=1.0, audited=False, expert_label="a")
    assert tally_row(sent_up) == [("stage:expert", 1), ("called", 1)]
    agreed = row(
        stage="expert", confidence=1.0, cost=1.0, audited=True, expert_label="a", cheap_label="a"
    )
    assert tally_row(agreed) == [("stage:expert", 1), ("called", 1), ("audits", 1), ("agree", 1)]
    disagreed = row(
        stage="expert", confidence=1.0, cost=1.0, audited=True, expert_label="a", cheap_label="b"
    )
    assert ("agree", 1) not in tally_row(disagreed) and ("audits", 1) in tally_row(disagreed)


def test_workers_share_audit_counts_and_report_the_fleets_interval(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = started(clients)
    for k in range(6):
        a.answer(items(100, seed=k, prefix=f"a{k}-"))
        b.answer(items(100, seed=100 + k, prefix=f"b{k}-"))
    fleet = {k: int(v) for k, v in clients[0].hgetall("out:fleet").items()}
    assert sum(v for k, v in fleet.items() if k.startswith("stage:")) == 1200
    stats = b.cascade.stats()  # b wrote last: its meter holds the fleet's totals
    assert stats.audits == fleet["audits"] > 0
    assert sum(stats.stage_answers.values()) == 1200
    assert stats.n_items == 600  # what b itself answered
    assert abs(sum(stats.stage_share.values()) - 1.0) < 1e-9
    own = cascade()
    for k in range(6):
        own.process(items(100, seed=100 + k, prefix=f"b{k}-"))
    alone = own.stats()  # the same items answered alone: half the audits, a wider interval
    assert stats.ci_high - stats.ci_low < alone.ci_high - alone.ci_low


def test_expert_labels_reach_the_other_workers(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = started(clients)
    a.answer(items(100, seed=1, prefix="a"))  # warm-up: every label comes from the expert
    assert a.fleet.labels_shared == 100 and a.fleet.labels_received == 0
    before = b.cascade.labels_learned
    b.answer(items(10, seed=2, prefix="b"))
    assert b.fleet.labels_received == 100  # a's labels (not its own)
    assert b.cascade.labels_learned == before + 10 + 100
    a.answer(items(10, seed=3, prefix="a2-"))
    assert a.fleet.labels_received == 10


def test_a_new_worker_starts_from_the_latest_snapshot(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a = Worker("a", clients, snapshot_every_s=0.0)
    a.fleet.start(a.cascade, resumed=False)
    for k in range(3):
        a.answer(items(100, seed=k, prefix=f"a{k}-"))  # saves a snapshot after each batch
    assert clients[1].exists(FleetKeys.of("out").snapshot)
    late = Worker("late", clients)
    late.fleet.start(late.cascade, resumed=False)
    assert late.fleet.from_snapshot == "a"
    assert late.cascade.n_items == a.cascade.n_items == 300
    assert late.fleet.cursor == a.fleet.cursor
    probe = items(50, seed=9, prefix="p")
    got = late.cascade.cheap[0].model.predict(probe).labels
    assert list(got) == list(a.cascade.cheap[0].model.predict(probe).labels)
    # it draws its own audits and explorations, not a's
    assert late.cascade.rng.random() != a.cascade.rng.random()


def test_a_snapshot_of_another_config_is_not_used(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a = Worker("a", clients, snapshot_every_s=0.0)
    a.fleet.start(a.cascade, resumed=False)
    a.answer(items(100, seed=0, prefix="a"))
    other = Worker("other", clients)
    other.fleet.identity = "cfg-2"
    other.fleet.start(other.cascade, resumed=False)
    assert other.fleet.from_snapshot is None and other.cascade.n_items == 0


def test_no_snapshot_after_a_failed_run(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a = Worker("a", clients)
    a.fleet.start(a.cascade, resumed=False)
    a.answer(items(50, seed=0, prefix="a"))
    a.fleet.close(completed=False)
    assert not clients[1].exists("out:snapshot")
    b = Worker("b", clients)
    b.fleet.start(b.cascade, resumed=False)
    b.answer(items(50, seed=1, prefix="b"))
    b.fleet.close(completed=True)
    assert clients[1].exists("out:snapshot")
    assert np.isfinite(b.cascade.stats().ci_low)


def quiet_cascade() -> OnlineCascade:
    """As :func:`cascade`, with no exploration: only the warm-up is sent up anyway."""
    c = cascade()
    c.config = c.config.model_copy(update={"exploration_beta": 0.0})
    return c


def test_the_fleet_warms_up_once_and_explores_on_its_own_position(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = Worker("a", clients), Worker("b", clients)
    a.cascade, b.cascade = quiet_cascade(), quiet_cascade()
    a.fleet.start(a.cascade, resumed=False)
    b.fleet.start(b.cascade, resumed=False)
    first = a.cascade.process(items(100, seed=1, prefix="a"))
    assert sum(d.explored for d in first[:40]) == 40  # the fleet's warm-up: positions 0-39
    second = b.cascade.process(items(100, seed=2, prefix="b"))
    assert not any(d.explored for d in second)  # b's items come after it: no warm-up
    assert int(clients[0].hget("out:fleet", "position")) == 200
    assert b.cascade.position == 200 and b.cascade.n_items == 100
    beta = 0.99
    b.cascade.config = b.cascade.config.model_copy(update={"exploration_beta": beta})
    assert b.cascade.exploration_rate() == pytest.approx(beta**200)
    alone = quiet_cascade()
    assert sum(d.explored for d in alone.process(items(100, seed=2, prefix="b"))) == 40


def test_a_worker_learns_the_others_labels_before_its_batch(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = started(clients)
    a.answer(items(100, seed=1, prefix="a"))  # the warm-up's 40 labels and more
    assert b.cascade.heads[0].size == 0
    decisions = b.cascade.process(items(50, seed=2, prefix="b"))
    # before deciding, b learned a's labels: its stage and its deferral head
    assert b.fleet.labels_received == a.fleet.labels_shared >= 40
    own = sum(d.expert_label is not None for d in decisions)
    # all but the first refit_every (20) of a's labels, which b's stage could not answer yet
    assert b.cascade.heads[0].size == a.fleet.labels_shared - 20 + own
    assert any(d.stage == "ngram" for d in decisions)  # its head was fitted: it answers


def test_labels_published_without_weights_teach_the_stages_only(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    text, _ = clients
    b = Worker("b", clients)
    b.fleet.start(b.cascade, resumed=False)
    old = [[{"id": f"o{i}", "input": it.input, "fields": it.fields}, it.fields["label"]]
           for i, it in enumerate(items(40, seed=3, prefix="o"))]  # fmt: skip
    text.xadd("out:labels", {"w": "old", "labels": json.dumps(old)})
    b.fleet.claim(0)
    assert b.fleet.labels_received == 40 and b.cascade.labels_learned == 40
    assert b.cascade.heads[0].size == 0


def test_a_restarted_worker_learns_what_was_published_while_it_was_down_once(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = started(clients)
    a.answer(items(60, seed=1, prefix="a1-"))
    b.answer(items(60, seed=2, prefix="b1-"))  # learns a's first labels
    seen = b.fleet.labels_received
    b.fleet.close(completed=True)  # b is down ...
    a.answer(items(60, seed=3, prefix="a2-"))
    a.answer(items(60, seed=4, prefix="a3-"))
    while_down = a.fleet.labels_shared - seen
    back = Worker("b", clients)  # ... and back, from its own checkpoint
    back.cascade.load_state_dict(b.cascade.state_dict())
    back.fleet.start(back.cascade, resumed=True)
    back.answer(items(10, seed=5, prefix="b2-"))
    assert back.fleet.labels_received == while_down > 0
    back.answer(items(10, seed=6, prefix="b3-"))
    assert back.fleet.labels_received == while_down  # nothing learned twice


def test_without_learn_before_the_labels_are_learned_after_the_batch(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = started(clients, learn_before=False)
    a.answer(items(50, seed=1, prefix="a"))
    decisions = b.cascade.process(items(10, seed=2, prefix="b"))
    assert b.fleet.labels_received == 0  # the batch was decided without them
    b.fleet.after_batch(items(10, seed=2, prefix="b"), decisions)
    assert b.fleet.labels_received == 50


def test_a_fleet_whose_counters_predate_positions_starts_after_its_answers(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    text, _ = clients
    text.hset("out:fleet", mapping={"stage:ngram": 700, "stage:expert": 300, "called": 300})
    a = Worker("a", clients)
    a.fleet.start(a.cascade, resumed=False)
    assert a.fleet.claim(5) == 1000
    assert a.fleet.claim(5) == 1005


def test_a_batch_goes_on_when_redis_fails_and_its_labels_are_sent_later(
    clients: tuple[redis.Redis, redis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = started(clients)
    first = a.answer(items(50, seed=1, prefix="a"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    live = a.fleet.client
    a.fleet.client = redis.Redis(port=port, decode_responses=True, socket_connect_timeout=1)
    decisions = a.cascade.process(items(10, seed=2, prefix="down"))
    assert len(decisions) == 10 and "last known position" in caplog.text
    assert a.cascade.position == 60  # where it stood, plus this batch
    a.fleet.client = live
    last = a.answer(items(10, seed=3, prefix="up"))
    b.answer(items(10, seed=4, prefix="b"))
    paid = sum(d.expert_label is not None for d in first + decisions + last)
    assert b.fleet.labels_received == a.fleet.labels_shared == paid  # none lost
