"""Many processes, one cascade that learns: what they share through Redis.

Workers reading one stream through one consumer group (:mod:`tiered.io.redis_streams`)
and writing one output stream ``OUT`` behave as one online cascade, and so do the
replicas of a gateway serving an online classify cascade (``OUT`` is then
``PREFIX:online:CASCADE``; with no output stream, each replica adds its answers to the
counters itself: ``after_batch(..., count=True)``):

- **Audit counts** live in the hash ``OUT:fleet`` (``stage:NAME``, ``called``,
  ``audits``, ``agree``). The output sink's atomic step adds a row's counts in the step
  that writes it, so they count each input id once, however often workers die. After
  each of its writes a worker's audit meter (:class:`FleetMeter`) takes the fleet's
  totals: the controller steers the *fleet's* agreement estimate to the target, and the
  interval a worker reports is the fleet's.
- **Expert labels** go to the stream ``OUT:labels`` (one entry per batch, trimmed to
  about ``labels_maxlen`` entries). Every worker reads it in full from the last entry it
  saw, and its cheap stages learn from the other workers' labels as from their own (the
  deferral heads learn from each worker's own answers: their features are its own).
- **Snapshots**: every ``snapshot_every`` seconds (and when it stops) a worker saves its
  learned state to ``OUT:snapshot`` as arrays + JSON (:mod:`tiered.store.state`; never
  pickle). A worker without a checkpoint of its own starts from the latest snapshot of
  the same cascade config, not cold, and reads the labels published after it.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.core.items import Item
from tiered.errors import StoreError
from tiered.online.audit import AgreementMeter
from tiered.store.state import decode_state, encode_state

if TYPE_CHECKING:
    import redis

    from tiered.online.cascade import OnlineCascade
    from tiered.online.decisions import OnlineDecision

_LABEL_POLL = 50  # label entries (batches) learned per batch answered: catch up gradually


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """The Redis keys a fleet writing the output stream ``output`` shares."""

    counters: str
    labels: str
    snapshot: str

    @classmethod
    def of(cls, output: str) -> FleetKeys:
        return cls(f"{output}:fleet", f"{output}:labels", f"{output}:snapshot")


def tally_row(row: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The fleet counters one output row adds to (as :class:`AgreementMeter` counts it:
    an audit counts when the expert gave a label to compare the cheap one with)."""
    out = [(f"stage:{row['stage']}", 1)]
    expert = row.get("expert_label")
    if expert is not None:
        out.append(("called", 1))
        if row.get("audited"):
            out.append(("audits", 1))
            if row.get("cheap_label") == expert:
                out.append(("agree", 1))
    return out


class FleetMeter(AgreementMeter):
    """An audit meter whose totals are the fleet's: each worker's own batch is added as
    it is answered, then :meth:`set_fleet` puts in the fleet's totals after the write
    (which hold that batch, once). The sliding window stays this worker's."""

    def __init__(self, stage_names: Sequence[str], window: int) -> None:
        super().__init__(len(stage_names), window)
        self.stage_names = list(stage_names)

    @classmethod
    def replacing(cls, meter: AgreementMeter, stage_names: Sequence[str]) -> FleetMeter:
        """A fleet meter holding ``meter``'s state (its window of recent items)."""
        out = cls(stage_names, meter.window)
        out.load_state_dict(meter.state_dict())
        return out

    def set_fleet(self, totals: Mapping[str, int]) -> None:
        self.total_stage = np.array(
            [int(totals.get(f"stage:{n}", 0)) for n in self.stage_names], dtype=np.int64
        )
        self.total_audits = int(totals.get("audits", 0))
        self.total_agree = int(totals.get("agree", 0))
        self.total_called = int(totals.get("called", 0))


def _item_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "input": item.input, "fields": item.fields}


class Fleet:
    """One worker's share of a fleet (see the module docstring): the run calls
    :meth:`start` once its cascade is restored, :meth:`after_batch` after every batch it
    answered, :meth:`close` at the end. ``tally``/``on_totals`` go to the output sink."""

    def __init__(
        self,
        client: redis.Redis,
        raw_client: redis.Redis,
        output: str,
        worker: str,
        identity: str,
        *,
        snapshot_every_s: float = 30.0,
        labels_maxlen: int = 2000,
    ) -> None:
        self.client = client  # str replies
        self.raw = raw_client  # bytes replies: the snapshot blob
        self.keys = FleetKeys.of(output)
        self.worker = worker
        self.identity = identity
        self.snapshot_every_s = snapshot_every_s
        self.labels_maxlen = labels_maxlen
        self.tally = tally_row
        self.meter: FleetMeter | None = None
        self.cascade: OnlineCascade | None = None
        self.cursor = "0-0"  # the last label entry seen
        self.from_snapshot: str | None = None  # the worker whose snapshot this one loaded
        self.labels_shared = 0
        self.labels_received = 0
        self._next_snapshot = time.monotonic() + snapshot_every_s
        self._dirty = False

    def _redis(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        import redis

        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise StoreError(f"{what} ({self.keys.counters}) failed: {exc}") from exc

    # -- the run's hooks ---------------------------------------------------------------------

    def start(self, cascade: OnlineCascade, resumed: bool) -> None:
        """Join the fleet: the latest snapshot when there is no checkpoint of our own, the
        fleet's audit counts in the meter, the label stream from where we stand."""
        self.cascade = cascade
        if resumed:
            # labels published while this worker was down are not replayed: it goes on
            # from its own checkpoint and learns from the labels that come from now on
            last = self._redis("XREVRANGE", self.client.xrevrange, self.keys.labels, count=1)
            self.cursor = last[0][0] if last else "0-0"
        else:
            self._load_snapshot(cascade)
            # this worker draws its own audits and explorations, not another worker's
            cascade.rng = np.random.default_rng([cascade.seed, zlib.crc32(self.worker.encode())])
        self.meter = FleetMeter.replacing(cascade.meter, cascade.stage_names)
        cascade.meter = self.meter
        self.on_totals(self._redis("HGETALL", self.client.hgetall, self.keys.counters))
        self._next_snapshot = time.monotonic() + self.snapshot_every_s

    def on_totals(self, totals: Mapping[str, Any]) -> None:
        """The fleet's counters after a write (the output sink calls this)."""
        if self.meter is not None:
            self.meter.set_fleet({k: int(v) for k, v in totals.items()})

    def after_batch(
        self, items: Sequence[Item], decisions: Sequence[OnlineDecision], *, count: bool = False
    ) -> None:
        """Publish this batch's expert labels, learn from the other workers' new ones,
        save a snapshot when one is due. ``count``: also add the batch to the fleet's
        counters (when no output sink does it) and take the fleet's totals."""
        cascade = self.cascade
        assert cascade is not None, "start() first"
        mine = [
            [_item_json(it), d.expert_label]
            for it, d in zip(items, decisions, strict=True)
            if d.expert_label is not None
        ]
        pipe = self.client.pipeline(transaction=False)
        if count:
            added: Counter[str] = Counter()
            for d in decisions:
                for name, inc in self.tally(d.to_dict()):
                    added[name] += inc
            for name, inc in added.items():
                pipe.hincrby(self.keys.counters, name, inc)
            pipe.hgetall(self.keys.counters)
        if mine:
            data = json.dumps(mine, ensure_ascii=False, default=str)
            pipe.xadd(
                self.keys.labels,
                {"w": self.worker, "labels": data},
                maxlen=self.labels_maxlen,
                approximate=True,
            )
        pipe.xread({self.keys.labels: self.cursor}, count=_LABEL_POLL)
        replies = self._redis("sharing labels", pipe.execute)
        if count:
            self.on_totals(replies[-3] if mine else replies[-2])
        self.labels_shared += len(mine)
        self._learn(replies[-1])
        self._dirty = True
        if time.monotonic() >= self._next_snapshot:
            self.save_snapshot()

    def _learn(self, reply: Any) -> None:
        if not reply:
            return
        entries = reply[0][1] if isinstance(reply, list) else reply[self.keys.labels][0]
        items: list[Item] = []
        labels: list[str] = []
        for eid, fields in entries:
            self.cursor = eid
            if fields.get("w") == self.worker:
                continue
            for it, label in json.loads(fields["labels"]):
                items.append(Item(id=str(it["id"]), input=it["input"], fields=it["fields"]))
                labels.append(label)
        if items:
            assert self.cascade is not None
            self.cascade.learn_labels(items, labels)
            self.labels_received += len(items)

    def close(self, completed: bool) -> None:
        """Leave a snapshot for the workers that come next, if the run ended cleanly and
        learned anything (a failed batch may have left the cascade half updated)."""
        try:
            if completed and self._dirty and self.cascade is not None:
                self.save_snapshot()
        finally:
            self.raw.close()

    # -- snapshots ---------------------------------------------------------------------------

    def save_snapshot(self) -> None:
        assert self.cascade is not None, "start() first"
        blob = encode_state(
            {
                "identity": self.identity,
                "worker": self.worker,
                "labels_id": self.cursor,
                "saved_at": time.time(),
                "state": self.cascade.state_dict(),
            }
        )
        self._redis("saving the snapshot", self.raw.set, self.keys.snapshot, blob)
        self._next_snapshot = time.monotonic() + self.snapshot_every_s
        self._dirty = False

    def _load_snapshot(self, cascade: OnlineCascade) -> None:
        blob = self._redis("reading the snapshot", self.raw.get, self.keys.snapshot)
        if blob is None:
            return
        snap = decode_state(blob, what=f"the fleet snapshot {self.keys.snapshot}")
        if not isinstance(snap, dict) or snap.get("identity") != self.identity:
            return  # another cascade config wrote it: start cold rather than mix them
        try:
            cascade.load_state_dict(snap["state"])
        except Exception as exc:  # a snapshot that does not fit this cascade is unusable
            raise StoreError(
                f"cannot start from the fleet snapshot {self.keys.snapshot} "
                f"({type(exc).__name__}: {exc}); delete that key to start cold"
            ) from exc
        self.cursor = str(snap["labels_id"])
        self.from_snapshot = str(snap["worker"])


__all__ = ["Fleet", "FleetKeys", "FleetMeter", "tally_row"]
