"""Online learning through the gateway: a classify cascade that keeps learning.

The cascade's stages but the last are the cheap ones, the last is the expert, exactly
as in ``tiered run``: :class:`tiered.online.OnlineCascade` decides who answers, sends
what it must to the expert, and teaches the cheap stages from the expert's labels.

Safe under concurrent requests: one ``asyncio.Lock`` serializes the learning steps (an
``OnlineCascade`` is one mutable learner), and each step runs as a task shielded from
its request's cancellation, so a request whose deadline passes gets its 504 while the
step it started still completes and leaves the learner consistent. The learned state is
written to the gateway's state store (:class:`tiered.store.learner_state.LearnerStates`,
arrays + JSON) every ``checkpoint_every_items`` items and at shutdown, and loaded at
start-up; state learned with a different cascade config is refused rather than mixed in.

Gateway replicas (``server.shared``) learn as one instead, as the workers of a Redis
stream do (:class:`~tiered.online.fleet.Fleet`): after each step a replica publishes its
expert labels, learns from the other replicas' new ones and adds its answers to the
shared audit counts (the controller steers the replicas' agreement, not its own); every
``snapshot_every`` seconds and at shutdown it saves the learned state to Redis, and a
replica that starts loads the latest snapshot of the same config rather than starting
cold.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tiered.core.cascade import Cascade
from tiered.core.items import Item
from tiered.errors import ConfigError, StoreError
from tiered.serve.config import CascadeEntry
from tiered.serve.engine import CURRENT_TALLY, ItemOutcome, ServedCascade
from tiered.serve.metrics import GatewayMetrics
from tiered.serve.protocol import StageTrace
from tiered.store.fingerprint import json_fingerprint
from tiered.store.learner_state import LearnerStates
from tiered.store.state import encode_state

if TYPE_CHECKING:
    from tiered.online.fleet import Fleet

logger = logging.getLogger("tiered.serve")


def config_hash(entry: CascadeEntry) -> str:
    """A hash of what the learned state depends on: the stages and the online settings."""
    keep = {
        "stages": [s.model_dump(mode="json", include={"name", "model"}) for s in entry.stages],
        "online": entry.online.model_dump(mode="json", exclude={"checkpoint_every_items"})
        if entry.online
        else None,
    }
    return json_fingerprint(keep)


class OnlineServedCascade(ServedCascade):
    """A classify cascade served by an :class:`~tiered.online.OnlineCascade`."""

    def __init__(
        self,
        entry: CascadeEntry,
        cascade: Cascade,
        metrics: GatewayMetrics,
        *,
        deadline_s: float,
        store: sqlite3.Connection | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        from tiered.online import OnlineCascade

        assert entry.online is not None
        if len(cascade.stages) < 2:
            raise ConfigError(
                f"online cascade '{entry.name}' needs a cheap stage and an expert (2+ stages)",
                field="stages",
            )
        super().__init__(entry, cascade, metrics, deadline_s=deadline_s)
        self.learner = OnlineCascade(
            cheap=cascade.stages[:-1],
            expert=cascade.stages[-1],
            config=entry.online.online_config(),
        )
        self.checkpoint_every = entry.online.checkpoint_every_items
        self.states = LearnerStates(store) if store is not None else None
        self.hash = config_hash(entry)
        self.fleet = fleet
        self._lock = asyncio.Lock()
        self._unsaved = 0
        if self.states is not None:
            self._load()
        if fleet is not None:
            # our own checkpoint, when there is one, goes on; else the replicas' snapshot
            fleet.start(self.learner, resumed=self.learner.n_items > 0)
            if fleet.from_snapshot is not None:
                logger.info(
                    "online cascade '%s' starts from the replicas' snapshot (%d items)",
                    self.name,
                    self.learner.n_items,
                )
        elif self.states is None:
            logger.warning(
                "online cascade '%s' has no store (server.store): what it learns is lost "
                "when the gateway stops",
                self.name,
            )

    @classmethod
    def _create(
        cls,
        entry: CascadeEntry,
        cascade: Cascade,
        metrics: GatewayMetrics,
        *,
        deadline_s: float,
        resources: dict[str, Any],
    ) -> ServedCascade:
        shared = resources.get("shared_state")
        fleet = shared.fleet(entry.name, config_hash(entry)) if shared is not None else None
        try:
            return cls(
                entry,
                cascade,
                metrics,
                deadline_s=deadline_s,
                store=resources.get("store"),
                fleet=fleet,
            )
        except BaseException:
            if fleet is not None:
                fleet.raw.close()
            raise

    # ------------------------------------------------------------------ store

    def _load(self) -> None:
        assert self.states is not None
        saved = self.states.load(self.name)
        if saved is None:
            return
        if saved.config_hash != self.hash:
            raise StoreError(
                f"the store holds online state of cascade '{self.name}' learned with a "
                "different config (stages or online settings); rename the cascade, use "
                "another store, or delete its row from table learner_state"
            )
        try:
            self.learner.load_state_dict(saved.state)
        except Exception as exc:  # a state that does not fit this cascade is unusable
            why = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            raise StoreError(
                f"cannot restore the online state of cascade '{self.name}' ({why}); "
                "use another store, or delete its row from table learner_state"
            ) from exc
        logger.info("online cascade '%s' resumed after %d items", self.name, saved.n_items)

    def _state_blob(self) -> bytes:
        return encode_state(self.learner.state_dict())

    def _write(self, blob: bytes) -> None:
        assert self.states is not None
        self.states.save(self.name, config_hash=self.hash, n_items=self.learner.n_items, blob=blob)

    def save(self) -> None:
        """Write the learned state now (also done every ``checkpoint_every_items``, and
        for replicas every ``snapshot_every`` seconds)."""
        if self.states is not None:
            self._write(self._state_blob())
            self._unsaved = 0
        if self.fleet is not None:
            self.fleet.save_snapshot()

    # ------------------------------------------------------------------ serving

    async def _step(self, items: Sequence[Item]) -> list[Any]:
        async with self._lock:
            decisions = await self.learner.aprocess(items)
            self._observe_bounds()
            self._unsaved += len(items)
            if self.fleet is not None:
                # network and learning from other replicas' labels: off the event loop
                await asyncio.to_thread(self._share, items, decisions)
            if self.states is not None and self._unsaved >= self.checkpoint_every:
                # encoding a large learner takes a while: off the event loop, still
                # under the lock so no other step mutates it meanwhile
                blob = await asyncio.to_thread(self._state_blob)
                self._write(blob)
                self._unsaved = 0
            return decisions

    def _observe_bounds(self) -> None:
        """The agreement's confidence sequence and alarm, for /metrics."""
        cs = self.learner.confidence_sequence()
        ctl = self.learner.controller
        self.metrics.observe_bounds(self.name, cs.low, cs.high, ctl.escalated, ctl.alarms)

    def _share(self, items: Sequence[Item], decisions: list[Any]) -> None:
        assert self.fleet is not None
        try:
            self.fleet.after_batch(items, decisions, count=True)
        except StoreError as exc:
            # the answers stand; this step's labels and counts are not shared
            logger.warning("online cascade '%s' could not share a step: %s", self.name, exc)

    async def run(self, items: Sequence[Item]) -> list[ItemOutcome]:
        step = asyncio.ensure_future(self._step(items))
        step.add_done_callback(lambda t: t.cancelled() or t.exception())
        decisions = await asyncio.shield(step)
        names = self.learner.stage_names
        # the expert's wall time (its calls are timed by InstrumentedModel); the cheap
        # stages run inside the learner and are not timed one by one
        tally = CURRENT_TALLY.get()
        expert_ms = 0.0
        if tally is not None:
            expert_ms = 1000 * sum(c.seconds for c in tally.calls if c.stage == names[-1])
        self.metrics.observe_answers(self.name, names, [d.stage_index for d in decisions])
        expert = names[-1]
        out = []
        for d in decisions:
            trace = [
                StageTrace(
                    stage=d.stage,
                    accepted=True,
                    cost_usd=d.cost,
                    latency_ms=expert_ms if d.stage == expert else 0.0,
                    signals={"p_correct": d.confidence},
                )
            ]
            if d.audited and d.stage == expert and d.audited_stage is not None:
                # an audit: the cheap stage's answer was checked by the expert, whose
                # label is the answer; the cheap one's is not used
                trace.insert(
                    0,
                    StageTrace(stage=d.audited_stage, accepted=False, cost_usd=0.0, latency_ms=0.0),
                )
            elif d.audited:  # the expert gave no label: the cheap answer stands
                trace.append(
                    StageTrace(stage=expert, accepted=False, cost_usd=0.0, latency_ms=expert_ms)
                )
            out.append(
                ItemOutcome(
                    label=d.label,
                    stage=d.stage,
                    stage_index=d.stage_index,
                    cost_usd=d.cost,
                    latency_ms=expert_ms if d.expert_label is not None else 0.0,
                    confidence=d.confidence,
                    signals={"p_correct": d.confidence},
                    trace=trace,
                    learned=d.expert_label is not None,
                )
            )
        return out

    def close(self) -> None:
        try:
            if self.states is not None:
                self._write(self._state_blob())
            if self.fleet is not None:
                self.fleet.close(completed=True)  # leaves a snapshot if it learned anything
        finally:
            super().close()


__all__ = ["OnlineServedCascade", "config_hash"]
