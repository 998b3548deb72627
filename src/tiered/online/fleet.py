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
  interval a worker reports is the fleet's. Audits stay what the guarantee
  (:mod:`tiered.online.confseq`) needs: each worker flips the same coin of probability
  ``audit_rate`` for every cheap answer, whatever the others do.
- **One warm-up and one exploration schedule.** Before each batch a worker claims the
  batch's positions in the fleet's stream (``position`` in ``OUT:fleet``, an atomic
  increment; :class:`~tiered.online.cascade.StreamShare`): the warm-up is the fleet's
  first ``warmup`` items and item ``n`` is explored with probability ``beta**n`` where
  ``n`` counts every worker's items, so N workers pay for one warm-up, not N. (A worker
  that dies after claiming leaves its positions unused: a schedule, not a statistic.)
- **Expert labels** go to the stream ``OUT:labels`` (one entry per batch, trimmed to
  about ``labels_maxlen`` entries). Before each batch a worker learns the labels the
  others published since its last batch, so its cheap stages decide with what any
  worker paid for (during the warm-up, batches are ``refit_every`` items: the workers
  learn each other's warm-up labels as it goes). The deferral heads learn from them too
  (:func:`learn_heads`): a worker's stages answer the labelled items before learning
  them, and each label carries its inverse probability of having been asked for, so the
  heads weigh it as its worker did (else each of N workers' heads sees 1/N of the
  labels, trails its stages as they improve and defers too much). Where a worker stands in that
  stream is kept in the hash ``OUT:fleet:cursors``: a worker restarted from its own
  checkpoint goes on from there, so the labels published while it was down are
  learned once (those it had learned after its last checkpoint are not learned again).
- **Snapshots**: every ``snapshot_every`` seconds (and when it stops) a worker saves its
  learned state to ``OUT:snapshot`` as arrays + JSON (:mod:`tiered.store.state`; never
  pickle). A worker without a checkpoint of its own starts from the latest snapshot of
  the same cascade config, not cold, and reads the labels published after it.
"""

from __future__ import annotations

import json
import logging
import math
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
from tiered.online.head import head_features, learn_agreement
from tiered.store.state import decode_state, encode_state

if TYPE_CHECKING:
    import redis

    from tiered.online.cascade import OnlineCascade
    from tiered.online.decisions import OnlineDecision

_LABEL_POLL = 50  # label entries (batches) learned per batch answered: catch up gradually
_log = logging.getLogger("tiered.online")

# Claim the next ARGV[1] positions of the fleet's stream; returns the first one's. A fleet
# whose counters predate ``position`` starts it at the items already answered.
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], 'position') == 0 then
  local n, flat = 0, redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 6) == 'stage:' then n = n + tonumber(flat[i + 1]) end
  end
  redis.call('HSET', KEYS[1], 'position', n)
end
return redis.call('HINCRBY', KEYS[1], 'position', ARGV[1]) - tonumber(ARGV[1])
"""


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """The Redis keys a fleet writing the output stream ``output`` shares."""

    counters: str
    labels: str
    snapshot: str
    cursors: str

    @classmethod
    def of(cls, output: str) -> FleetKeys:
        return cls(
            f"{output}:fleet", f"{output}:labels", f"{output}:snapshot", f"{output}:fleet:cursors"
        )


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


def learn_shared(
    cascade: OnlineCascade,
    items: list[Item],
    labels: list[str],
    weights: Sequence[float] | None = None,
) -> None:
    """Another worker's expert labels: the cheap stages learn them; with ``weights`` (each
    label's inverse probability of having been asked for, where it was paid for) the
    deferral heads learn from them too. Each stage answers the items before learning them
    (in steps of ``refit_every``, as a worker's own labels come), and its head learns
    whether it agreed, as it does from the worker's own labels."""
    if weights is None or cascade.config.deferral_signal != "head":
        cascade.learn_labels(items, labels)
        return
    step = max(cascade.config.refit_every, 1)
    for i in range(0, len(items), step):
        part = slice(i, i + step)
        learn_heads(cascade, items[part], np.array(labels[part], dtype=object), weights[part])
        cascade.learn_labels(items[part], labels[part])


def learn_heads(
    cascade: OnlineCascade, items: list[Item], labels: np.ndarray, weights: Sequence[float]
) -> None:
    """The deferral heads learn whether their stage agrees with ``labels`` on ``items``: a
    later stage only on the items no earlier one would answer at the current threshold."""
    w = np.minimum(np.asarray(weights, dtype=float), cascade.config.head_max_weight)
    would = np.zeros(len(items), dtype=bool)  # an earlier stage would answer
    for k, stage in enumerate(cascade.cheap):
        idx = np.flatnonzero(~would)
        if idx.size == 0:
            break
        answers = stage.model.predict([items[i] for i in idx.tolist()])
        x = head_features(answers, cascade.trackers[k])
        ok = answers.answered
        predicted = np.asarray(answers.labels, dtype=object)
        head = cascade.heads[k]
        if ok.any():
            learn_agreement(
                head, cascade.trackers[k], x[ok], predicted[ok], labels[idx[ok]], w[idx[ok]]
            )
        p = np.where(ok, head.predict(x), 0.0)
        would[idx[ok & (p >= cascade.controller.threshold)]] = True


class Fleet:
    """One worker's share of a fleet (see the module docstring): the run calls
    :meth:`start` once its cascade is restored, :meth:`after_batch` after every batch it
    answered, :meth:`close` at the end. ``tally``/``on_totals`` go to the output sink.
    The cascade calls :meth:`claim` before each of its batches and :meth:`shared` after.

    ``learn_before``: learn the other workers' labels in :meth:`claim`, before each batch
    (else in :meth:`after_batch`: for a caller that runs the cascade where it must not
    wait on learning, a gateway's event loop).
    """

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
        learn_before: bool = True,
    ) -> None:
        self.client = client  # str replies
        self.raw = raw_client  # bytes replies: the snapshot blob
        self.keys = FleetKeys.of(output)
        self.worker = worker
        self.identity = identity
        self.snapshot_every_s = snapshot_every_s
        self.labels_maxlen = labels_maxlen
        self.learn_before = learn_before
        self.tally = tally_row
        self.meter: FleetMeter | None = None
        self.cascade: OnlineCascade | None = None
        self.cursor = "0-0"  # the last label entry seen
        self.from_snapshot: str | None = None  # the worker whose snapshot this one loaded
        self.labels_shared = 0
        self.labels_received = 0
        self._mine: list[list[Any]] = []  # this worker's labels not yet published
        self._next_snapshot = time.monotonic() + snapshot_every_s
        self._dirty = False
        self._claim = client.register_script(_CLAIM)

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
            # on from where this worker stood in the label stream: what was published
            # while it was down is learned once; with no record of that, from now on
            saved = self._redis("HGET", self.client.hget, self.keys.cursors, self.worker)
            if saved is None:
                last = self._redis("XREVRANGE", self.client.xrevrange, self.keys.labels, count=1)
                saved = last[0][0] if last else "0-0"
            self.cursor = saved
        else:
            self._load_snapshot(cascade)
            # this worker draws its own audits and explorations, not another worker's
            cascade.rng = np.random.default_rng([cascade.seed, zlib.crc32(self.worker.encode())])
        self.meter = FleetMeter.replacing(cascade.meter, cascade.stage_names)
        cascade.meter = self.meter
        cascade.share = self
        self.on_totals(self._redis("HGETALL", self.client.hgetall, self.keys.counters))
        self._next_snapshot = time.monotonic() + self.snapshot_every_s

    def on_totals(self, totals: Mapping[str, Any]) -> None:
        """The fleet's counters after a write (the output sink calls this)."""
        if self.meter is not None:
            self.meter.set_fleet({k: int(v) for k, v in totals.items()})

    def claim(self, n: int) -> int:
        """The fleet-stream position of the first of this worker's next ``n`` items; first
        publishes this worker's labels not yet sent and learns the others' new ones (with
        ``learn_before``). If Redis fails, the batch goes on where this worker last stood
        (the fleet's schedule is a cost matter, not the guarantee's)."""
        pipe = self.client.pipeline(transaction=False)
        self._publish(pipe)
        self._claim(keys=[self.keys.counters], args=[n], client=pipe)
        if self.learn_before:
            self._read_labels(pipe)
        try:
            replies = self._redis("claiming stream positions", pipe.execute)
        except StoreError as exc:
            _log.warning("%s; this batch goes on from the last known position", exc)
            assert self.cascade is not None
            return self.cascade.position
        self._sent()
        if self.learn_before:
            self._learn(replies[-1])
            return int(replies[-2])
        return int(replies[-1])

    def shared(
        self, items: Sequence[Item], decisions: Sequence[OnlineDecision], weights: np.ndarray
    ) -> None:
        """Keep a batch's expert labels for the others (sent with the next Redis step),
        each with its inverse probability of having been asked for (their heads' weight)."""
        self._mine += [
            [_item_json(it), d.expert_label, round(float(w), 4)]
            for it, d, w in zip(items, decisions, weights.tolist(), strict=True)
            if d.expert_label is not None
        ]
        self._dirty = True

    def after_batch(
        self, items: Sequence[Item], decisions: Sequence[OnlineDecision], *, count: bool = False
    ) -> None:
        """After a batch was answered (and written): publish its expert labels (handed over
        by the cascade's :meth:`shared`), save a snapshot when one is due. ``count``: also
        add the batch to the fleet's counters (when no output sink does it) and take the
        fleet's totals. Without ``learn_before``, also learn the other workers' new labels."""
        assert self.cascade is not None, "start() first"
        pipe = self.client.pipeline(transaction=False)
        if count:
            added: Counter[str] = Counter()
            for d in decisions:
                for name, inc in self.tally(d.to_dict()):
                    added[name] += inc
            for name, inc in added.items():
                pipe.hincrby(self.keys.counters, name, inc)
            pipe.hgetall(self.keys.counters)
        self._publish(pipe)
        if not self.learn_before:
            self._read_labels(pipe)
        replies = self._redis("sharing labels", pipe.execute)
        if count:
            self.on_totals(replies[len(added)])
        self._sent()
        if not self.learn_before:
            self._learn(replies[-1])
        if time.monotonic() >= self._next_snapshot:
            self.save_snapshot()

    def _publish(self, pipe: Any) -> None:
        """Queue this worker's unsent labels (one entry) and where it stands in the label
        stream (the cursor a restart goes on from)."""
        if self._mine:
            data = json.dumps(self._mine, ensure_ascii=False, default=str)
            pipe.xadd(
                self.keys.labels,
                {"w": self.worker, "labels": data},
                maxlen=self.labels_maxlen,
                approximate=True,
            )
        pipe.hset(self.keys.cursors, self.worker, self.cursor)

    def _sent(self) -> None:
        self.labels_shared += len(self._mine)
        self._mine = []

    def _read_labels(self, pipe: Any) -> None:
        pipe.xread({self.keys.labels: self.cursor}, count=_LABEL_POLL)

    def _learn(self, reply: Any) -> None:
        if not reply:
            return
        entries = reply[0][1] if isinstance(reply, list) else reply[self.keys.labels][0]
        items: list[Item] = []
        labels: list[str] = []
        weights: list[float] = []
        for eid, fields in entries:
            self.cursor = eid
            if fields.get("w") == self.worker:
                continue
            for it, label, *weight in json.loads(fields["labels"]):
                items.append(Item(id=str(it["id"]), input=it["input"], fields=it["fields"]))
                labels.append(label)
                weights.append(float(weight[0]) if weight else math.nan)
        if items:
            assert self.cascade is not None
            # labels published without weights teach the cheap stages only
            known = not any(math.isnan(w) for w in weights)
            learn_shared(self.cascade, items, labels, weights if known else None)
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


__all__ = ["Fleet", "FleetKeys", "FleetMeter", "learn_heads", "learn_shared", "tally_row"]
