"""Redis Streams as the input and output of a run: consumer groups, exactly once.

**Source** (:class:`RedisStreamSource`, ``redis://HOST:PORT/STREAM?group=G&consumer=C``;
parameters in :mod:`tiered.io.redis_url`). Each worker is one consumer of one group:

1. its own pending entries first (``XREADGROUP ... 0``): after a restart, what it had
   been handed but had not answered;
2. entries another consumer has left unanswered for ``claim_idle`` seconds (a dead
   worker's) are taken over with ``XAUTOCLAIM`` and then read as its own;
3. then new entries (``XREADGROUP ... >``), waiting up to ``block`` seconds for them.

An entry handed out more than ``deliveries`` times without an answer (every worker that
took it died or failed on it) goes to the dead-letter stream with the reason, instead of
being tried again. An entry is a record: its fields (strings), or a single ``json``
field holding the record as a JSON object; the record's id is the id field of the input
config, else the entry id. A record that cannot become an item is a reject.

**Sink** (:class:`RedisStreamSink`, ``redis://HOST:PORT/OUT_STREAM``): one entry per
decision with the fields of a JSONL output line (``id``, ``label``, ``stage``, ...; a
null field is left out; numbers and ``true``/``false`` as text, see
:func:`decode_output_entry`). Each write is ONE Lua step that, for every row whose id is
not yet in the ``done`` set, adds it to the set and appends the entry, then ``XACK``\\ s
the input entries the rows answer. So each input id is output exactly once across all
workers, even when a worker is killed between writing and acknowledging (nothing is
acknowledged that is not written, and a second answer of the same id, by a worker that
took over a slow one's entries, is dropped). The step may also count what it wrote in a
hash (``tally``): the fleet's shared audit counters, exact for the same reason.

**How long ids are remembered** (``done_keep``, seconds; 0: for ever). The done set is
kept in two generations: ``DONE`` takes the ids answered now, ``DONE:prev`` the ones of
the generation before, and every ``done_keep`` seconds (by the Redis server's clock,
kept in ``DONE:since``) the current one becomes the previous one and the previous one is
dropped. An id is remembered for at least ``done_keep`` seconds after its answer (and
at most twice that), so memory holds about two generations of ids, not every id ever.
Exactly once holds for answers less than ``done_keep`` apart, which covers every way a
worker can answer an entry again (a slow worker finishing entries another one took over
after ``claim_idle`` seconds, a restart's own pending entries: entries are acknowledged
in the step that writes their answers, so none stays pending once answered). The same
id *added to the input twice* more than ``done_keep`` apart is answered twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tiered.core.items import Item
from tiered.errors import DataError, StoreError
from tiered.io.redis_url import StreamURL
from tiered.io.sinks import OUTPUT_COLUMNS
from tiered.io.sources import FieldMap, FileSource, _Bad

if TYPE_CHECKING:
    import redis

# Append each row unless its key is in the done set (adding it), count what was written,
# acknowledge the input entries: all in one atomic step. With keep_ms > 0, the done set
# turns over every keep_ms (see the module docstring): the previous one is still asked.
# KEYS: out stream, done set, input stream, tally hash (unused ones repeat KEYS[1]),
#       previous done set, the current one's start (server ms).
# ARGV: group ("" = no ack), tally ("1"/"0"), n_rows, keep_ms, then per row: key,
#       n_pairs, field/value pairs, n_counts, counter/increment pairs; then the entry ids
#       to ack.
_WRITE_ACK = """
local i = 5
local written = 0
local tally = ARGV[2] == '1'
local keep = tonumber(ARGV[4])
if keep > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local since = tonumber(redis.call('GET', KEYS[6]) or '0')
  if since == 0 then
    redis.call('SET', KEYS[6], now)
  elseif now - since >= keep then
    if redis.call('EXISTS', KEYS[2]) == 1 then
      redis.call('RENAME', KEYS[2], KEYS[5])
    else
      redis.call('DEL', KEYS[5])
    end
    redis.call('SET', KEYS[6], now)
  end
end
for _ = 1, tonumber(ARGV[3]) do
  local key = ARGV[i]
  local nf = tonumber(ARGV[i + 1])
  local first = i + 2
  i = first + 2 * nf
  local nt = tonumber(ARGV[i])
  local counts = i + 1
  i = counts + 2 * nt
  local new = redis.call('SADD', KEYS[2], key) == 1
  if new and keep > 0 then new = redis.call('SISMEMBER', KEYS[5], key) == 0 end
  if new then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, first + 2 * nf - 1))
    written = written + 1
    if tally then
      for t = counts, counts + 2 * nt - 1, 2 do
        redis.call('HINCRBY', KEYS[4], ARGV[t], ARGV[t + 1])
      end
    end
  end
end
if ARGV[1] ~= '' then
  for a = i, #ARGV, 1000 do
    redis.call('XACK', KEYS[3], ARGV[1], unpack(ARGV, a, math.min(a + 999, #ARGV)))
  end
end
local totals = {}
if tally then totals = redis.call('HGETALL', KEYS[4]) end
return {written, totals}
"""

# XAUTOCLAIM ... JUSTID through Lua: the client's own parsing of it drops the cursor.
# JUSTID: the delivery is counted when the entry is read as this consumer's own.
_AUTOCLAIM = """
return redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5],
                  'JUSTID')
"""

Tally = Callable[[Mapping[str, Any]], Sequence[tuple[str, int]]]
"""The counters one written row adds to (name, increment)."""

DONE_KEEP_S = 7 * 24 * 3600.0
"""Seconds an answered id is remembered at least (``done_keep``; 0: for ever)."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, default=str)


def encode_fields(row: Mapping[str, Any]) -> list[str]:
    """A row as a stream entry's field/value list: null fields left out, strings as they
    are, everything else as JSON text (``true``, ``0.93``)."""
    out: list[str] = []
    for k, v in row.items():
        if v is not None:
            out.append(k)
            out.append(_text(v))
    return out


def decode_output_entry(fields: Mapping[str, str]) -> dict[str, Any]:
    """An output entry as the JSONL output line it stands for (typed values)."""
    out: dict[str, Any] = {c: fields.get(c) for c in OUTPUT_COLUMNS[:6]}
    for c in ("confidence", "cost"):
        out[c] = None if out[c] is None else float(out[c])
    out["audited"] = out["audited"] == "true"
    for c in OUTPUT_COLUMNS[6:]:
        if c in fields:
            out[c] = fields[c]
    return out


class AtomicAppend:
    """The Lua step: append rows not yet done, count them, acknowledge input entries."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(_WRITE_ACK)

    def __call__(
        self,
        stream: str,
        done: str,
        rows: Sequence[tuple[str, list[str], Sequence[tuple[str, int]]]],
        *,
        ack: tuple[str, str, Sequence[str]] | None = None,
        tally_key: str | None = None,
        keep_s: float = DONE_KEEP_S,
    ) -> tuple[int, dict[str, int]]:
        """Append ``(key, fields, counts)`` rows; acknowledge ``(stream, group, ids)``;
        ``done`` remembers keys for ``keep_s`` seconds at least (0: for ever).

        Returns how many rows were new (appended) and the tally hash after the step.
        """
        keep_ms = max(int(keep_s * 1000), 0)
        group = "" if ack is None else ack[1]
        args: list[Any] = [group, "1" if tally_key else "0", len(rows), keep_ms]
        for key, fields, counts in rows:
            args += [key, len(fields) // 2, *fields, len(counts)]
            for name, inc in counts:
                args += [name, inc]
        if ack is not None:
            args += list(ack[2])
        keys = [
            stream, done, ack[0] if ack else stream, tally_key or stream, f"{done}:prev",
            f"{done}:since",
        ]  # fmt: skip
        try:
            written, flat = self._script(keys=keys, args=args)
        except Exception as exc:
            raise _store_error(exc, f"cannot write to the Redis stream {stream!r}") from exc
        totals = {flat[j]: int(flat[j + 1]) for j in range(0, len(flat), 2)}
        return int(written), totals


def _store_error(exc: Exception, what: str) -> Exception:
    """A Redis failure as a StoreError (anything else unchanged)."""
    import redis

    return StoreError(f"{what}: {exc}") if isinstance(exc, redis.RedisError) else exc


@dataclass(slots=True)
class EntryReject:
    """A stream entry that could not become an item, or that no worker could answer."""

    entry: str
    stream: str
    reason: str
    raw: str
    field: str | None = None
    deliveries: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entry": self.entry,
            "stream": self.stream,
            "field": self.field,
            "reason": self.reason,
            "raw": self.raw,
        }
        if self.deliveries is not None:
            out["deliveries"] = self.deliveries
        return out


@dataclass(slots=True)
class EntryBatch:
    """Entries handed to this worker; ``end`` lists every entry id to acknowledge once
    the batch is answered (items and rejects alike)."""

    items: list[Item] = field(default_factory=list)
    gold: list[str | None] = field(default_factory=list)
    rejects: list[EntryReject] = field(default_factory=list)
    end: list[str] = field(default_factory=list)

    @property
    def n_records(self) -> int:
        return len(self.items) + len(self.rejects)


class _EntryParser(FileSource):
    """The file sources' record checks, with the entry id as the default record id."""

    entry_id = ""

    def _default_id(self, offset: int, line: int | None) -> str:
        return self.entry_id


class RedisStreamSource:
    """A consumer of a group on a Redis stream (see the module docstring).

    ``exit_when_idle``: end the stream once no entry has come for that many seconds and
    no entry of the group is pending with any consumer (None: wait for entries forever;
    an idle moment yields an empty batch, so a run can stop or checkpoint meanwhile).
    """

    def __init__(
        self,
        url: StreamURL,
        fields: FieldMap | None = None,
        *,
        exit_when_idle: float | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = url
        self.name = str(url)
        self.stream = url.stream
        p = url.params
        self.group, self.consumer, self.dead = p["group"], p["consumer"], p["dead"]
        self.claim_idle_ms = int(url.number("claim_idle") * 1000)
        self.max_deliveries = url.integer("deliveries", minimum=1)
        self.block_ms = int(url.number("block") * 1000)
        self.exit_when_idle = exit_when_idle
        self.client = client if client is not None else url.client()
        self._append = AtomicAppend(self.client)
        self._autoclaim = self.client.register_script(_AUTOCLAIM)
        self._parser = _EntryParser(self.name, fields or FieldMap())
        self._check_own = True  # own pending entries may exist (start, after a claim)
        self._claim_cursor = "0-0"
        self.claimed = 0
        self.dead_lettered = 0

    # -- reading ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as exc:
            raise _store_error(exc, f"{what} on {self.name} failed") from exc

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; an existing group is kept."""
        import redis

        try:
            self.client.xgroup_create(
                self.stream, self.group, id=self.url.params["start"], mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise _store_error(exc, f"creating group {self.group!r}") from exc
        except redis.RedisError as exc:
            raise _store_error(exc, f"creating group {self.group!r}") from exc

    def _read(self, count: int, start: str, block: int | None) -> list[tuple[str, dict[str, str]]]:
        reply = self._call(
            "XREADGROUP",
            self.client.xreadgroup,
            self.group,
            self.consumer,
            {self.stream: start},
            count=count,
            block=block,
        )
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else reply[self.stream][0]
        return [(eid, dict(f or {})) for eid, f in entries]

    def _own_pending(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """This consumer's pending entries (each read counts as one more delivery); those
        delivered too often go to the dead-letter stream, deleted ones are acknowledged."""
        entries = self._read(count, "0", None)
        if len(entries) < count:
            self._check_own = False
        if not entries:
            return []
        rows = self._call(
            "XPENDING",
            self.client.xpending_range,
            self.stream,
            self.group,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries),
            consumername=self.consumer,
        )
        times = {r["message_id"]: int(r["times_delivered"]) for r in rows}
        keep, gone, dead = [], [], []
        for eid, f in entries:
            n = times.get(eid, 1)
            if not f:
                gone.append(eid)  # deleted from the stream (trimmed) while pending
            elif n > self.max_deliveries:
                dead.append((eid, f, n))
            else:
                keep.append((eid, f))
        if gone:
            self._call("XACK", self.client.xack, self.stream, self.group, *gone)
        if dead:
            self._dead_letter(dead)
        return keep

    def _dead_letter(self, entries: list[tuple[str, dict[str, str], int]]) -> None:
        rows = []
        for eid, f, n in entries:
            why = (
                f"delivered {n} times without an answer (a worker died or failed on it each "
                f"time; the limit is deliveries={self.max_deliveries})"
            )
            rej = EntryReject(eid, self.stream, why, json.dumps(f, ensure_ascii=False), None, n)
            rows.append((eid, encode_fields(rej.to_json()), ()))
        ids = [eid for eid, _, _ in entries]
        self._append(self.dead, f"{self.dead}:ids", rows, ack=(self.stream, self.group, ids))
        self.dead_lettered += len(entries)

    def _claim(self, count: int) -> int:
        """Take over entries idle with other consumers for ``claim_idle``; how many."""
        claimed = 0
        while claimed < count:
            reply = self._call(
                "XAUTOCLAIM",
                self._autoclaim,
                keys=[self.stream],
                args=[
                    self.group,
                    self.consumer,
                    self.claim_idle_ms,
                    self._claim_cursor,
                    count - claimed,
                ],
            )
            self._claim_cursor = reply[0]
            claimed += len(reply[1])
            if self._claim_cursor == "0-0":
                break
        if claimed:
            self._check_own = True
            self.claimed += claimed
        return claimed

    def _group_pending(self) -> int:
        return int(self._call("XPENDING", self.client.xpending, self.stream, self.group)["pending"])

    def _batch(self, entries: list[tuple[str, dict[str, str]]]) -> EntryBatch:
        batch = EntryBatch()
        parser = self._parser
        for eid, f in entries:
            batch.end.append(eid)
            raw = json.dumps(f, ensure_ascii=False)
            try:
                record: Any = f
                if len(f) == 1 and "json" in f:
                    try:
                        record = json.loads(f["json"])
                    except json.JSONDecodeError as exc:
                        raise _Bad("json", f"not valid JSON: {exc.msg}") from None
                parser.entry_id = eid
                item, gold = parser._item(record, 0, None)
            except _Bad as bad:
                where = str(
                    DataError(bad.message, path=f"{self.name} entry {eid}", field=bad.field)
                )
                batch.rejects.append(EntryReject(eid, self.stream, where, raw, bad.field))
            else:
                batch.items.append(item)
                batch.gold.append(gold)
        return batch

    def batches(
        self, start: Any = None, batch_size: int = 256, max_records: int | None = None
    ) -> Iterator[EntryBatch]:
        """Batches of entries for this consumer (``start`` is not needed: the group
        remembers what was handed out), at most ``max_records`` entries in all."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.ensure_group()
        claim_every_s = max(self.claim_idle_ms / 2000, self.block_ms / 1000, 0.05)
        next_claim = 0.0  # at once: a new worker takes over a dead one's entries first
        delivered = 0
        idle_since = time.monotonic()
        while max_records is None or delivered < max_records:
            room = batch_size if max_records is None else min(batch_size, max_records - delivered)
            entries = self._own_pending(room) if self._check_own else []
            if not entries and not self._check_own:
                now = time.monotonic()
                if now >= next_claim:
                    next_claim = now + claim_every_s
                    if self._claim(room):
                        continue
                entries = self._read(room, ">", self.block_ms or None)
            if entries:
                batch = self._batch(entries)
                delivered += batch.n_records
                idle_since = time.monotonic()
                yield batch
                continue
            if self._check_own:
                continue  # only dead or deleted entries were pending: look again
            if (
                self.exit_when_idle is not None
                and time.monotonic() - idle_since >= self.exit_when_idle
                and self._group_pending() == 0
            ):
                return
            yield EntryBatch()  # an idle moment: the run may stop or checkpoint

    def records_hint(self) -> int | None:
        """Unknown: other workers take entries from the same stream."""
        return None

    def acknowledge(self, position: Any) -> None:
        """Nothing to do: the output sink acknowledges entries in the step that writes
        their answers (see :class:`RedisStreamSink`)."""

    def close(self) -> None:
        self.client.close()


class RedisStreamSink:
    """Appends rows to a stream exactly once per ``key_field`` value (see the module
    docstring); with ``ack = (input stream, group)``, each write also acknowledges the
    input entries listed in its ``upto`` position.

    ``tally`` maps a row to the counters it adds to ``tally_key`` (when written);
    ``on_totals`` is handed the counters after every write. ``done_keep_s``: seconds a
    written key is remembered at least (see the module docstring; 0: for ever).
    ``owns_client``: close the client with the sink.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        done: str,
        *,
        key_field: str = "id",
        ack: tuple[str, str] | None = None,
        tally: Tally | None = None,
        tally_key: str | None = None,
        on_totals: Callable[[dict[str, int]], None] | None = None,
        done_keep_s: float = DONE_KEEP_S,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.owns_client = owns_client
        self.stream = stream
        self.done = done
        self.key_field = key_field
        self.ack = ack
        self.tally = tally
        self.tally_key = tally_key if tally is not None else None
        self.on_totals = on_totals
        self.done_keep_s = done_keep_s
        self._append = AtomicAppend(client)
        self.written = 0
        self.duplicates = 0

    def write(self, rows: Sequence[Mapping[str, Any]], upto: Any = None) -> None:
        """Append ``rows`` and acknowledge the entry ids in ``upto``, in one step."""
        ids = list(upto) if self.ack is not None and isinstance(upto, list) else []
        if not rows and not ids:
            return
        tally = self.tally
        packed = [
            (str(r[self.key_field]), encode_fields(r), tally(r) if tally is not None else ())
            for r in rows
        ]
        ack = None if self.ack is None or not ids else (*self.ack, ids)
        written, totals = self._append(
            self.stream, self.done, packed, ack=ack, tally_key=self.tally_key,
            keep_s=self.done_keep_s,
        )  # fmt: skip
        self.written += written
        self.duplicates += len(rows) - written
        if self.on_totals is not None and self.tally_key is not None:
            self.on_totals(totals)

    def sync(self) -> None:
        """Nothing to do: every write was one durable step (position token: None)."""

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


__all__ = [
    "DONE_KEEP_S",
    "AtomicAppend",
    "EntryBatch",
    "EntryReject",
    "RedisStreamSink",
    "RedisStreamSource",
    "Tally",
    "decode_output_entry",
    "encode_fields",
]
