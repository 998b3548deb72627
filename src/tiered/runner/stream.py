"""One session of a resumable run: :class:`StreamRun`.

Exactly once: every ``checkpoint.every_items`` items or ``every_seconds`` seconds every
sink is synced (files: flushed and fsynced), then ONE store transaction commits the
source's position, every sink's position, the counters, the history and the learner's
state (see :mod:`tiered.runner.checkpoint`). Running the same plan again cuts the sinks
back to their committed positions and goes on from the source's committed position with
the learned state of that checkpoint, so after SIGKILL every input record is answered
(or rejected) exactly once. Ctrl-C or SIGTERM stops at the next batch boundary and
commits first; the summary says which signal stopped the run.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered.errors import ModelError, StoreError
from tiered.io.sinks import decision_row
from tiered.runner.build import ModelWrapper, RunCascade, build_cascade
from tiered.runner.checkpoint import Checkpointer, Endpoints, Resumed
from tiered.runner.counters import LearnerStats, RunCounters, history_row
from tiered.runner.files import ensure_folders
from tiered.runner.replay_out import cheap_answers, replay_records
from tiered.runner.streams import plan_endpoints
from tiered.runner.summary import RunSummary, summarise

if TYPE_CHECKING:
    from tiered.runner.plan import RunPlan
    from tiered.runner.progress import RunView
    from tiered.runner.protocols import Batch, Position

# A checkpoint serialises the learner (its replay cache too): keep them to at most about
# 5% of the time by waiting at least this many times the last one's duration.
_CHECKPOINT_GAP = 19


class StreamRun:
    """One session of a run: resume, stream, checkpoint, summarise.

    ``endpoints`` default to the plan's files or Redis streams (by their URL scheme:
    :func:`tiered.runner.streams.plan_endpoints`);
    ``view`` is told the progress after every batch; ``wrap_expert`` wraps the expert's
    model once built (to time it, say).
    """

    def __init__(
        self,
        plan: RunPlan,
        *,
        endpoints: Endpoints | None = None,
        view: RunView | None = None,
        wrap_expert: ModelWrapper | None = None,
    ) -> None:
        self.plan = plan
        self.endpoints = endpoints
        self.view = view
        self.wrap_expert = wrap_expert
        self.stop_signal: int | None = None
        self._stop = threading.Event()

    def stop(self, signum: int = signal.SIGINT) -> None:
        """Stop at the next batch boundary, after a checkpoint (safe from any thread)."""
        if self.stop_signal is None:
            self.stop_signal = signum
        self._stop.set()

    # -- running ---------------------------------------------------------------------------

    def run(self) -> RunSummary:
        plan = self.plan
        # the cascade first: a config error is told before the input is read and checked
        rc = build_cascade(plan, wrap_expert=self.wrap_expert)
        endpoints = self.endpoints or plan_endpoints(plan)
        folders: dict[str, Path | None] = {}
        if self.endpoints is None:  # the plan's own files (an output may be a stream)
            files = {"--output": plan.output, "--rejects": plan.rejects}
            folders = {k: v for k, v in files.items() if isinstance(v, Path)}
            folders["--replay-out"] = plan.replay_out
        folders |= {"--store": plan.store, "--report": plan.report}
        try:
            ensure_folders(folders)
        except BaseException:
            endpoints.source.close()
            raise
        cfg = plan.config
        checkpointer = Checkpointer(plan.store, endpoints)
        resumed = checkpointer.open(
            cfg.identity_hash(), fresh=plan.fresh, config=cfg.model_dump(mode="json")
        )
        shared, completed = endpoints.shared, False
        try:
            saved = resumed.checkpoint
            if saved is not None and saved.learner is not None:
                self._restore(rc, saved.learner)
            if shared is not None:
                shared.start(rc.cascade, resumed=saved is not None)
            resumed.counters.sessions += 1
            summary = self._stream(rc, checkpointer, resumed)
            completed = True
            return summary
        finally:
            try:
                if shared is not None:
                    shared.close(completed)
            finally:
                checkpointer.close()

    def _restore(self, rc: RunCascade, state: Any) -> None:
        """Load the checkpointed learner; a state that does not fit is a StoreError."""
        try:
            rc.cascade.load_state_dict(state)
        except Exception as exc:  # any failure here means the saved state is unusable
            why = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            raise StoreError(
                f"cannot restore the learned state saved in {self.plan.store} ({why}); it may "
                "come from another tiered version: pass --fresh to start over"
            ) from exc

    def _stream(self, rc: RunCascade, cp: Checkpointer, resumed: Resumed) -> RunSummary:
        plan, cfg = self.plan, self.plan.config
        source = cp.endpoints.source
        counters = resumed.counters
        t0 = time.perf_counter()
        wall_before = counters.wall_s
        records_before = counters.records
        session_items = 0
        position: Position | None = resumed.position
        history: list[dict[str, Any]] = []
        last_items, last_records, last_time, min_gap = counters.items, counters.records, t0, 0.0
        every_items, every_s = cfg.checkpoint.every_items, cfg.checkpoint.every_seconds

        def checkpoint() -> None:
            nonlocal last_items, last_records, last_time, min_gap, history
            started = time.perf_counter()
            counters.wall_s = wall_before + (started - t0)
            cp.commit(position, counters, rc.cascade.state_dict(), history)
            history = []
            last_items, last_records = counters.items, counters.records
            last_time = time.perf_counter()
            min_gap = _CHECKPOINT_GAP * (last_time - started)

        max_records = None if plan.limit is None else max(plan.limit - counters.records, 0)
        view = self.view
        old_handlers = self._install_signals()
        try:
            if view is not None:
                total = source.records_hint()
                if total is not None and plan.limit is not None:
                    total = min(total, plan.limit)
                view.start(total, counters.records)
            batches = source.batches(
                start=position, batch_size=cfg.batch_size, max_records=max_records
            )
            for batch in batches:
                self._handle(rc, cp, batch, counters)
                now = time.perf_counter()
                if batch.n_records:  # else an idle moment of a stream: nothing to record
                    position = batch.end
                    session_items += len(batch.items)
                    stats = LearnerStats.read(rc.cascade.stats())
                    history.append(history_row(counters, stats, wall_before + now - t0, rc.target))
                    if view is not None:
                        view.update(counters, stats, session_items, now - t0)
                if self._stop.is_set():
                    break
                due = counters.items - last_items >= every_items or now - last_time >= every_s
                fresh = counters.records != last_records  # an idle stream commits nothing
                if fresh and due and now - last_time >= min_gap:
                    checkpoint()
                if plan.throttle_s > 0 and batch.n_records:
                    time.sleep(plan.throttle_s)
            checkpoint()
        finally:
            if view is not None:
                view.stop()
            self._restore_signals(old_handlers)
        summary = summarise(
            counters,
            LearnerStats.read(rc.cascade.stats()),
            rc.stage_names,
            target=rc.target,
            escalate=rc.cascade.config.escalate,
            resumed_at=records_before if resumed.checkpoint is not None else None,
            session_items=session_items,
            session_s=time.perf_counter() - t0,
            stopped_early=self._stop.is_set(),
            stop_signal=self.stop_signal,
            output=str(plan.output),
            rejects_path=str(plan.rejects),
            store=str(plan.store),
        )
        if plan.report is not None:
            self._report(cp.history(), summary)
        return summary

    def _report(self, history: list[dict[str, Any]], summary: RunSummary) -> None:
        from tiered.eval.stream_report import write_stream_report

        plan = self.plan
        assert plan.report is not None
        write_stream_report(
            plan.report,
            history=history,
            summary=summary.to_dict(),
            config=plan.config.model_dump(mode="json"),
            title=f"tiered run: {Path(plan.input).name if plan.input != '-' else 'stdin'}",
            input=str(plan.input),
        )

    def _handle(self, rc: RunCascade, cp: Checkpointer, batch: Batch, c: RunCounters) -> None:
        """Answer one batch: write its rejects, decisions and replay records; count."""
        output, rejects, replay = cp.sink("output"), cp.sink("rejects"), cp.sink("replay")
        c.records += batch.n_records
        if batch.rejects and rejects is not None:
            rejects.write([r.to_json() for r in batch.rejects], batch.end)
            c.rejects += len(batch.rejects)
        items = batch.items
        if not items:
            if output is not None:
                output.write([], batch.end)  # a stream sink may acknowledge rejected input
            return
        cheap = cheap_answers(rc.cheap, items) if replay is not None else None
        decisions = rc.cascade.process(items)
        if len(decisions) != len(items):
            raise ModelError(
                f"the online cascade returned {len(decisions)} decisions for {len(items)} items"
            )
        truth: list[str | None] | None = None
        truth_cost = None
        if rc.expert_is_column:
            read = rc.expert.model.predict(items)
            truth, truth_cost = list(read.labels), rc.expert.cost.cost(read)
        rows = []
        for it, d in zip(items, decisions, strict=True):
            if d.id != it.id:
                raise ModelError(
                    f"the online cascade answered id {d.id!r} in the place of {it.id!r}"
                )
            rows.append(
                decision_row(
                    it.id,
                    d.label,
                    d.stage,
                    d.confidence,
                    d.cost,
                    d.audited,
                    d.expert_label,
                    d.cheap_label,
                )
            )
        if output is not None:
            output.write(rows, batch.end)
        if cp.endpoints.shared is not None:
            cp.endpoints.shared.after_batch(items, decisions)
        c.items += len(items)
        c.count_stages(d.stage for d in decisions)
        c.count_quality([d.label for d in decisions], batch.gold, truth)
        if replay is not None and cheap is not None:
            recs = replay_records(items, batch.gold, decisions, cheap, truth, truth_cost)
            replay.write(recs, batch.end)
            c.replay_records += len(recs)

    # -- signals ---------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        """Ctrl-C / SIGTERM: finish the batch, checkpoint, stop. A second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                raise KeyboardInterrupt
            self.stop(signum)

        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Callable[..., Any] | int | None]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


__all__ = ["StreamRun"]
