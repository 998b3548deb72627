"""Many workers, one cascade: shared audit counts, shared labels, snapshots (real Redis)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from tiered.core import FixedCost, Item, Stage
from tiered.core.spec import build_model
from tiered.io.redis_streams import RedisStreamSink
from tiered.io.sinks import decision_row
from tiered.online import OnlineCascade, OnlineConfig
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

    def __init__(self, name: str, clients: tuple[redis.Redis, redis.Redis], **kw: float) -> None:
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

    def answer(self, batch: list[Item]) -> None:
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
    a, b = Worker("a", clients), Worker("b", clients)
    a.fleet.start(a.cascade, resumed=False)
    b.fleet.start(b.cascade, resumed=False)
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
    a, b = Worker("a", clients), Worker("b", clients)
    a.fleet.start(a.cascade, resumed=False)
    b.fleet.start(b.cascade, resumed=False)
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
