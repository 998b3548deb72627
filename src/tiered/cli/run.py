"""``tiered run [CONFIG] INPUT -o OUTPUT``: label a stream with an online cascade, resumably.

Two ways to say what runs:

- a YAML config (:class:`tiered.config.run.RunConfig`):
  ``tiered run run.yaml in.jsonl -o out.jsonl``
- quick mode, no config: ``tiered run in.jsonl -o out.jsonl --text-field text
  --expert-field label --expert-cost 0.002 --target-agreement 0.96`` builds the default
  cheap stages (hashed n-gram; ``--embeddings`` adds the embedding stage) in front of a
  label-column expert.

Exactly once: every ``checkpoint.every_items`` items or ``every_seconds`` seconds the
output, reject and replay files are flushed and fsynced, then ONE SQLite transaction
commits the stream offset, their byte lengths, the counters, the history and the
learner's state. Re-running the same command truncates the files to the committed
lengths and goes on from the committed offset with the learned state of that checkpoint,
so after SIGKILL every input record is answered (or rejected) exactly once. Ctrl-C (or
SIGTERM) stops at the next batch boundary and commits first.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tiered.cli.app import app

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from tiered.config.run import RunConfig
    from tiered.core.cascade import Stage
    from tiered.core.items import Item
    from tiered.core.spec import BuildContext
    from tiered.io.sinks import DecisionWriter, JsonlWriter
    from tiered.io.sources import Source, SourceBatch
    from tiered.online import OnlineCascade, OnlineStats
    from tiered.store.runs import Checkpoint, RunStore

EXPERT = "expert"


# -- what to run ------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """A resolved invocation: the config plus every path and switch."""

    config: RunConfig
    input: str
    output: Path
    store: Path
    rejects: Path
    replay_out: Path | None = None
    report: Path | None = None
    fresh: bool = False
    limit: int | None = None
    progress: bool = True
    throttle_s: float = 0.0
    base_dir: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None


@dataclass
class RunSummary:
    """What a run did, over all its sessions (a resumed run counts from the start)."""

    records: int
    items: int
    rejects: int
    expert_calls: int
    expert_share: float
    audits: int
    agreement: float | None
    ci_low: float | None
    ci_high: float | None
    target: float | None
    usd_spent: float
    usd_expert_only: float
    wall_s: float
    stage_share: dict[str, float]
    accuracy: float | None = None
    expert_accuracy: float | None = None
    true_agreement: float | None = None
    resumed_at: int | None = None
    session_items: int = 0
    session_s: float = 0.0
    stopped_early: bool = False
    output: str = ""
    rejects_path: str = ""
    store: str = ""
    replay_records: int = 0

    @property
    def saving(self) -> float | None:
        if self.usd_expert_only <= 0:
            return None
        return 1.0 - self.usd_spent / self.usd_expert_only

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["saving"] = self.saving
        out["items_per_s"] = self.items_per_s
        return out


# -- reading the learner's stats ---------------------------------------------------------------


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def read_stats(stats: OnlineStats) -> dict[str, Any]:
    """The learner's stats as plain numbers for history rows (None for NaN)."""
    return {
        "n_items": stats.n_items,
        "expert_calls": stats.expert_calls,
        "audits": stats.audits,
        "agreement": _num(stats.audited_agreement),
        "ci_low": _num(stats.ci_low),
        "ci_high": _num(stats.ci_high),
        "usd_spent": float(stats.usd_spent),
        "usd_expert_only": float(stats.usd_expert_only),
        "window_agreement": _num(stats.window_agreement),
        "window_ci_low": _num(stats.window_ci_low),
        "window_ci_high": _num(stats.window_ci_high),
        "window_expert_share": _num(stats.window_expert_share),
        "threshold": _num(min(stats.thresholds.values(), default=None)),
    }


# -- the run -----------------------------------------------------------------------------------


def _located(reason: str, field_path: str, plan: RunPlan) -> Exception:
    """A build-time config error with the config file, the field's line and its full path."""
    from tiered.errors import ConfigError

    if plan.config_path is None:
        return ConfigError(reason, field=field_path)
    from tiered.config.yaml_file import _line_of, load_yaml

    _, node = load_yaml(plan.config_path)
    loc: list[int | str] = [int(p) if p.isdigit() else p for p in field_path.split(".")]
    return ConfigError(reason, path=plan.config_path, line=_line_of(node, loc), field=field_path)


class StreamRun:
    """One session of a run: resume, stream, checkpoint, summarise."""

    def __init__(self, plan: RunPlan, console: Console, err: Console) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.console = console
        self.err = err
        self._stop = False
        self.history_pending: list[dict[str, Any]] = []
        self.counters: dict[str, Any] = {}
        self._ctx: BuildContext | None = None

    # building

    def _stage(self, spec: Any, name: str, prefix: str) -> Stage:
        from tiered.core.cascade import Stage
        from tiered.core.costs import FixedCost, RecordedCost
        from tiered.core.spec import BuildContext, build_model
        from tiered.errors import ConfigError

        if self._ctx is None:
            # store_path: an LLM stage keeps its response cache in the run's store, so a
            # re-run after a kill does not pay again for the items after the checkpoint
            self._ctx = BuildContext(
                base_dir=self.plan.base_dir, resources={"store_path": str(self.plan.store)}
            )
        try:
            model = build_model(spec.model, self._ctx)
        except ConfigError as exc:
            inner = exc.field.removeprefix("model.").removeprefix("model") if exc.field else ""
            where = f"{prefix}.model.{inner}" if inner else f"{prefix}.model"
            raise _located(exc.reason, where, self.plan) from exc
        cost = (
            FixedCost(usd_per_call=spec.usd_per_call)
            if spec.usd_per_call is not None
            else RecordedCost()
        )
        return Stage(name=name, model=model, cost=cost)

    def build(self) -> OnlineCascade:
        cheap = [self._stage(s, s.stage_name, f"cheap.{i}") for i, s in enumerate(self.cfg.cheap)]
        self.expert = self._stage(self.cfg.expert, EXPERT, "expert")
        self.cheap = cheap
        # The expert's labels are free to read when the expert is a column of the input:
        # then the true agreement of every answer with the expert can be reported.
        self.expert_is_column = self.cfg.expert.model.get("kind") == "label_column"
        config = self.cfg.online
        self.target = config.target_agreement
        from tiered.online import OnlineCascade

        return OnlineCascade(cheap=cheap, expert=self.expert, config=config, seed=self.cfg.seed)

    # running

    def run(self) -> RunSummary:
        from tiered.io.sinks import DecisionWriter, JsonlWriter
        from tiered.io.sources import FieldMap, open_source
        from tiered.store.runs import Checkpoint, RunIdentity, RunStore

        plan, cfg = self.plan, self.cfg
        inp = cfg.input
        source = open_source(
            plan.input,
            FieldMap(
                text_field=inp.text_field,
                id_field=inp.id_field,
                label_field=inp.label_field,
                required_fields=tuple(inp.required_fields),
            ),
            format=inp.format,
        )
        oc = self.build()
        identity = RunIdentity(
            config_hash=cfg.identity_hash(),
            input=plan.input if plan.input == "-" else str(Path(plan.input).resolve()),
            output=str(plan.output.resolve()),
        )
        store = RunStore(plan.store)
        try:
            store.lock()
            saved = store.start(identity, fresh=plan.fresh, config=cfg.model_dump(mode="json"))
            cp = saved or Checkpoint()
            if saved is not None and saved.learner is not None:
                self._restore(oc, saved.learner)
            self.counters = {
                "records": 0,
                "items": 0,
                "rejects": 0,
                "wall_s": 0.0,
                "stage_counts": {},
                "gold_n": 0,
                "gold_correct": 0,
                "expert_gold_n": 0,
                "expert_gold_correct": 0,
                "truth_n": 0,
                "truth_agree": 0,
                "replay_records": 0,
                "sessions": 0,
            }
            self.counters.update(cp.counters)
            self.counters["sessions"] += 1
            writer = DecisionWriter(plan.output, cp.output_bytes)
            rejects = JsonlWriter(plan.rejects, cp.reject_bytes)
            replay = JsonlWriter(plan.replay_out, cp.replay_bytes) if plan.replay_out else None
            try:
                return self._stream(
                    oc, source, store, cp, writer, rejects, replay, saved is not None
                )
            finally:
                writer.close()
                rejects.close()
                if replay is not None:
                    replay.close()
        finally:
            store.close()

    def _restore(self, oc: OnlineCascade, state: Any) -> None:
        """Load the checkpointed learner; a state that does not fit is a StoreError."""
        from tiered.errors import StoreError

        try:
            oc.load_state_dict(state)
        except Exception as exc:  # any failure here means the saved state is unusable
            why = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            raise StoreError(
                f"cannot restore the learned state saved in {self.plan.store} ({why}); it may "
                "come from another tiered version: pass --fresh to start over"
            ) from exc

    def _stream(
        self,
        oc: OnlineCascade,
        source: Source,
        store: RunStore,
        cp: Checkpoint,
        writer: DecisionWriter,
        rejects: JsonlWriter,
        replay: JsonlWriter | None,
        resumed: bool,
    ) -> RunSummary:
        plan, cfg = self.plan, self.cfg
        t0 = time.perf_counter()
        wall_before = float(self.counters["wall_s"])
        session_items = 0
        offset = start_offset = cp.offset
        last_cp_items = int(self.counters["items"])
        last_cp_time = t0
        every_items, every_s = cfg.checkpoint.every_items, cfg.checkpoint.every_seconds

        # A checkpoint pickles the learner (its replay cache too): keep them to at most
        # about 5% of the time by waiting at least 19x the last one's duration.
        min_gap = 0.0

        def checkpoint() -> None:
            nonlocal cp, last_cp_items, last_cp_time, min_gap
            started = time.perf_counter()
            cp.output_bytes = writer.sync()
            cp.reject_bytes = rejects.sync()
            cp.replay_bytes = replay.sync() if replay is not None else 0
            cp.offset = offset
            self.counters["wall_s"] = wall_before + (time.perf_counter() - t0)
            cp.counters = dict(self.counters)
            cp.learner = oc.state_dict()
            cp = store.commit(cp, self.history_pending)
            self.history_pending = []
            last_cp_items = int(self.counters["items"])
            last_cp_time = time.perf_counter()
            min_gap = 19 * (last_cp_time - started)

        progress, task = self._progress(source, offset)
        old_handlers = self._install_signals()
        try:
            if progress is not None:
                progress.start()
            for batch in source.batches(start=offset, batch_size=cfg.batch_size, limit=plan.limit):
                self._handle(oc, batch, writer, rejects, replay)
                offset = batch.end
                session_items += len(batch.items)
                now = time.perf_counter()
                stats = read_stats(oc.stats())
                self._history_row(stats, wall_before + now - t0)
                if progress is not None and task is not None:
                    fields = self._progress_fields(stats, session_items, now - t0)
                    progress.update(task, completed=offset, **fields)  # type: ignore[arg-type]
                if self._stop:
                    break
                due = (
                    int(self.counters["items"]) - last_cp_items >= every_items
                    or now - last_cp_time >= every_s
                )
                if due and now - last_cp_time >= min_gap:
                    checkpoint()
                if plan.throttle_s > 0:
                    time.sleep(plan.throttle_s)
            checkpoint()
        finally:
            if progress is not None:
                progress.stop()
            self._restore_signals(old_handlers)
        history = store.history()
        summary = self._summary(
            read_stats(oc.stats()),
            resumed_at=start_offset if resumed else None,
            session_items=session_items,
            session_s=time.perf_counter() - t0,
        )
        if plan.report is not None:
            from tiered.eval.stream_report import write_stream_report

            write_stream_report(
                plan.report,
                history=history,
                summary=summary.to_dict(),
                config=cfg.model_dump(mode="json"),
                title=f"tiered run: {Path(plan.input).name if plan.input != '-' else 'stdin'}",
            )
        return summary

    def _handle(
        self,
        oc: OnlineCascade,
        batch: SourceBatch,
        writer: DecisionWriter,
        rejects: JsonlWriter,
        replay: JsonlWriter | None,
    ) -> None:
        from tiered.errors import ModelError

        c = self.counters
        c["records"] = batch.end
        if batch.rejects:
            rejects.write([r.to_json() for r in batch.rejects])
            c["rejects"] += len(batch.rejects)
        items = batch.items
        if not items:
            return
        cheap_answers = self._cheap_answers(items) if replay is not None else None
        decisions = oc.process(items)
        if len(decisions) != len(items):
            raise ModelError(
                f"the online cascade returned {len(decisions)} decisions for {len(items)} items"
            )
        truth: list[str | None] | None = None
        truth_cost = None
        if self.expert_is_column:
            read = self.expert.model.predict(items)
            truth, truth_cost = list(read.labels), self.expert.cost.cost(read)
        rows = []
        stages: Counter[str] = Counter()
        row = writer.row
        for it, d in zip(items, decisions, strict=True):
            if d.id != it.id:
                raise ModelError(
                    f"the online cascade answered id {d.id!r} in the place of {it.id!r}"
                )
            rows.append(
                row(
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
            stages[d.stage] += 1
        writer.write_rows(rows)
        c["items"] += len(items)
        sc = c["stage_counts"]
        for k, v in stages.items():
            sc[k] = sc.get(k, 0) + v
        labels = [d.label for d in decisions]
        for i, g in enumerate(batch.gold):
            if g is not None:
                c["gold_n"] += 1
                c["gold_correct"] += int(labels[i] == g)
                if truth is not None and truth[i] is not None:
                    c["expert_gold_n"] += 1
                    c["expert_gold_correct"] += int(truth[i] == g)
        if truth is not None:
            for lab, t in zip(labels, truth, strict=True):
                if t is not None:
                    c["truth_n"] += 1
                    c["truth_agree"] += int(lab == t)
        if replay is not None and cheap_answers is not None:
            recs = self._replay_records(
                items, batch.gold, decisions, cheap_answers, truth, truth_cost
            )
            replay.write(recs)
            c["replay_records"] += len(recs)

    def _cheap_answers(self, items: Sequence[Item]) -> list[tuple[str, Any, Any]]:
        """Every cheap stage's answers for ``items`` (for the replay log), before learning."""
        return [(s.name, a, s.cost.cost(a)) for s in self.cheap for a in [s.model.predict(items)]]

    def _replay_records(
        self,
        items: Sequence[Item],
        gold: Sequence[str | None],
        decisions: Sequence[Any],
        cheap: list[tuple[str, Any, Any]],
        truth: list[str | None] | None,
        truth_cost: np.ndarray | None,
    ) -> list[dict[str, Any]]:
        """Replay-log records (see ``tiered.replay.load``) for items whose expert label is known.

        The reference is the expert's label, so ``correct`` means "agrees with the expert"
        (the quality ``target_agreement`` speaks of). Items the expert never saw have no
        reference and are left out; ``via`` says how the reference came: ``expert`` (it
        answered), ``audit`` (a random audit: an unbiased sample) or ``column`` (read free
        from the input).
        """
        import numpy as np

        from tiered.core.signals import available_signals, read_signal

        sig: list[dict[str, np.ndarray]] = []
        for _, answers, _ in cheap:
            # a model that has seen no label yet may answer with zero classes
            no_classes = answers.probs is not None and answers.probs.shape[1] == 0
            names = [] if no_classes else available_signals(answers)
            sig.append({n: read_signal(answers, n) for n in names})
        cheap_cost = np.sum([np.asarray(c, dtype=float) for _, _, c in cheap], axis=0)
        out = []
        for i, (it, d) in enumerate(zip(items, decisions, strict=True)):
            ref = d.expert_label
            via = "audit" if d.audited else "expert"
            if ref is None and truth is not None and truth[i] is not None:
                ref, via = truth[i], "column"
            if ref is None:
                continue
            outputs: dict[str, Any] = {}
            for (name, answers, cost), s in zip(cheap, sig, strict=True):
                o: dict[str, Any] = {
                    "answer": answers.labels[i],
                    "correct": answers.labels[i] == ref,
                    "cost": float(cost[i]),
                }
                for k, v in s.items():
                    if not math.isnan(v[i]):
                        o[k] = float(v[i])
                outputs[name] = o
            if truth_cost is not None:  # a label column: what its stage charges per call
                expert_cost = float(truth_cost[i])
            else:  # what the item cost beyond the cheap stages
                expert_cost = max(float(d.cost) - float(cheap_cost[i]), 0.0)
            outputs[EXPERT] = {"answer": ref, "correct": True, "cost": expert_cost}
            rec: dict[str, Any] = {"id": it.id, "input": it.text, "reference": ref, "via": via}
            if gold[i] is not None:
                rec["gold"] = gold[i]
            rec["outputs"] = outputs
            out.append(rec)
        return out

    def _history_row(self, stats: dict[str, Any], wall_s: float) -> None:
        c = self.counters
        self.history_pending.append(
            {
                "n": int(c["items"]),
                "records": int(c["records"]),
                "rejects": int(c["rejects"]),
                "wall_s": round(wall_s, 3),
                **stats,
                "target": self.target,
                "stage_counts": dict(c["stage_counts"]),
                "gold_n": c["gold_n"],
                "gold_correct": c["gold_correct"],
                "truth_n": c["truth_n"],
                "truth_agree": c["truth_agree"],
            }
        )

    def _summary(
        self,
        stats: dict[str, Any],
        *,
        resumed_at: int | None,
        session_items: int,
        session_s: float,
    ) -> RunSummary:
        c = self.counters
        n = int(c["items"])
        sc = c["stage_counts"]
        names = [s.name for s in self.cheap] + [EXPERT]
        share = {k: (sc.get(k, 0) / n if n else 0.0) for k in names}
        calls = stats["expert_calls"]

        def ratio(a: str, b: str) -> float | None:
            return c[a] / c[b] if c[b] else None

        return RunSummary(
            records=int(c["records"]),
            items=n,
            rejects=int(c["rejects"]),
            expert_calls=calls,
            expert_share=calls / n if n else 0.0,
            audits=stats["audits"],
            agreement=stats["agreement"],
            ci_low=stats["ci_low"],
            ci_high=stats["ci_high"],
            target=self.target,
            usd_spent=stats["usd_spent"],
            usd_expert_only=stats["usd_expert_only"],
            wall_s=float(c["wall_s"]),
            stage_share=share,
            accuracy=ratio("gold_correct", "gold_n"),
            expert_accuracy=ratio("expert_gold_correct", "expert_gold_n"),
            true_agreement=ratio("truth_agree", "truth_n"),
            resumed_at=resumed_at,
            session_items=session_items,
            session_s=session_s,
            stopped_early=self._stop,
            output=str(self.plan.output),
            rejects_path=str(self.plan.rejects),
            store=str(self.plan.store),
            replay_records=int(c["replay_records"]),
        )

    # progress and signals

    def _progress(self, source: Any, offset: int) -> tuple[Progress | None, TaskID | None]:
        if not self.plan.progress or not self.err.is_terminal:
            return None, None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        total = _estimate_records(source)
        if total is not None and self.plan.limit is not None:
            total = min(total, self.plan.limit)
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("expert [cyan]{task.fields[share]}[/]"),
            TextColumn("{task.fields[usd]}"),
            TextColumn("agree {task.fields[agree]}"),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,
        )
        task = progress.add_task(
            "tiered run",
            total=total,
            completed=offset,
            rate="-",
            share="-",
            usd="-",
            agree="-",
        )
        return progress, task

    def _progress_fields(
        self, stats: dict[str, Any], session_items: int, elapsed: float
    ) -> dict[str, str]:
        n = max(int(self.counters["items"]), 1)
        agree = "-"
        if stats["agreement"] is not None:
            half = None
            if stats["ci_low"] is not None and stats["ci_high"] is not None:
                half = (stats["ci_high"] - stats["ci_low"]) / 2
            agree = f"{stats['agreement']:.3f}" + (f" ± {half:.3f}" if half is not None else "")
        return {
            "rate": f"{session_items / elapsed:,.0f} it/s" if elapsed > 0 else "-",
            "share": f"{100 * stats['expert_calls'] / n:.1f}%",
            "usd": f"${stats['usd_spent']:,.2f} vs ${stats['usd_expert_only']:,.2f} expert-only",
            "agree": agree,
        }

    def _install_signals(self) -> dict[int, Any]:
        """Ctrl-C / SIGTERM: finish the batch, checkpoint, stop. A second Ctrl-C stops at once."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def _estimate_records(source: Any) -> int | None:
    """Total records for the progress bar: Parquet metadata, or a newline count (< 2 GB)."""
    path = source.path
    if path == "-" or path.lower().endswith(".gz"):
        return None
    try:
        if source.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        size = os.path.getsize(path)
        if size > 2 * 1024**3:
            return None
        lines = 0
        last = b"\n"
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        lines += last != b"\n"
        return max(lines - (source.format == "csv"), 0)
    except OSError:
        return None


# -- printing -----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4g}"


def print_summary(console: Console, s: RunSummary) -> None:
    """The final summary table."""
    from rich.table import Table

    t = Table(title="tiered run: summary", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    rej = f"{s.rejects:,} rejected → {s.rejects_path}" if s.rejects else "0 rejected"
    t.add_row("items", f"{s.items:,} answered of {s.records:,} records ({rej})")
    t.add_row(
        "expert share",
        f"{_pct(s.expert_share)} ({s.expert_calls:,} expert calls, {s.audits:,} of them audits)",
    )
    if s.agreement is not None:
        ci = ""
        if s.ci_low is not None and s.ci_high is not None:
            ci = f" [{s.ci_low:.3f}, {s.ci_high:.3f}]"
        tgt = f", target {s.target:.3f}" if s.target is not None else ""
        t.add_row("agreement (audited)", f"{s.agreement:.3f}{ci} (95% CI){tgt}")
    else:
        t.add_row("agreement (audited)", "- (no audits yet)")
    if s.true_agreement is not None:
        t.add_row("agreement (true)", f"{s.true_agreement:.3f} vs the expert's label on every item")
    if s.accuracy is not None:
        extra = f" (expert alone: {s.expert_accuracy:.3f})" if s.expert_accuracy is not None else ""
        t.add_row("accuracy vs gold", f"{s.accuracy:.3f}{extra}")
    saving = f", saving {_pct(s.saving)}" if s.saving is not None else ""
    t.add_row("USD", f"{_usd(s.usd_spent)} spent vs {_usd(s.usd_expert_only)} expert-only{saving}")
    rate = f"{s.items_per_s:,.0f}" if not math.isnan(s.items_per_s) else "-"
    t.add_row("wall time", f"{s.wall_s:,.1f} s ({rate} items/s)")
    t.add_row("answered by", ", ".join(f"{k} {_pct(v)}" for k, v in s.stage_share.items()))
    if s.resumed_at is not None:
        t.add_row(
            "this session",
            f"resumed at record {s.resumed_at:,}; answered {s.session_items:,} items "
            f"in {s.session_s:,.1f} s",
        )
    console.print(t)


# -- the command --------------------------------------------------------------------------------


def _is_config(arg: str) -> bool:
    return arg.lower().endswith((".yaml", ".yml"))


_QUICK_FLAGS = {
    "online.target_agreement": "--target-agreement",
    "expert.usd_per_call": "--expert-cost",
    "cheap.1.model": "--embeddings",
    "seed": "--seed",
}


def quick_config(
    *,
    text_field: str,
    id_field: str | None,
    label_field: str | None,
    expert_field: str,
    expert_cost: float,
    target_agreement: float | None,
    embeddings: bool,
    format: str | None,
    seed: int,
) -> RunConfig:
    """The zero-config run: hashed n-grams (+ embeddings) in front of a label-column expert."""
    from pydantic import ValidationError

    from tiered.config import validation_error_to_config_error
    from tiered.config.run import RunConfig
    from tiered.errors import ConfigError

    cheap: list[dict[str, Any]] = [{"name": "hashed_ngram", "model": {"kind": "hashed_ngram"}}]
    if embeddings:
        cheap.append({"name": "embedding", "model": {"kind": "embedding"}})
    online: dict[str, Any] = {}
    if target_agreement is not None:
        online["target_agreement"] = target_agreement
    data = {
        "input": {
            "text_field": text_field,
            "id_field": id_field,
            "label_field": label_field,
            "format": format,
            "required_fields": [expert_field],
        },
        "cheap": cheap,
        "expert": {
            "model": {"kind": "label_column", "field": expert_field},
            "usd_per_call": expert_cost,
        },
        "online": online,
        "seed": seed,
    }
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:  # a bad flag value: name the flag
        err = validation_error_to_config_error(exc)
        flag = _QUICK_FLAGS.get(err.field or "", err.field)
        raise ConfigError(err.reason, field=flag) from exc


def make_plan(
    args: Sequence[str],
    output: Path,
    *,
    quick: dict[str, Any],
    format: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    store: Path | None = None,
    rejects: Path | None = None,
    replay_out: Path | None = None,
    report: Path | None = None,
    fresh: bool = False,
    limit: int | None = None,
    progress: bool = True,
    throttle_s: float = 0.0,
) -> RunPlan:
    """Resolve the command line (config mode or quick mode) into a :class:`RunPlan`."""
    from tiered.config.run import load_run_config, resolve_path
    from tiered.errors import ConfigError

    if len(args) == 2:
        config_path, input_arg = Path(args[0]), args[1]
        given = sorted(
            f"--{k.replace('_', '-')}" for k, v in quick.items() if v not in (None, False)
        )
        if given:
            raise ConfigError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for quick mode "
                f"(no config file); set {'it' if len(given) == 1 else 'them'} in {config_path}"
            )
        cfg = load_run_config(config_path)
        base = config_path.resolve().parent
        if format is not None:
            cfg.input.format = format  # type: ignore[assignment]
    elif len(args) == 1:
        input_arg = args[0]
        config_path = None
        if _is_config(input_arg):
            raise ConfigError(
                f"{input_arg} looks like a config file; give the INPUT too: "
                f"tiered run {input_arg} INPUT -o OUTPUT"
            )
        if not quick.get("expert_field"):
            raise ConfigError(
                "quick mode (no config file) needs --expert-field: the input column holding the "
                "expert's label",
                field="--expert-field",
            )
        if quick.get("expert_cost") is None:
            raise ConfigError(
                "quick mode needs --expert-cost: USD per expert answer (e.g. 0.002)",
                field="--expert-cost",
            )
        cfg = quick_config(
            text_field=quick.get("text_field") or "text",
            id_field=quick.get("id_field"),
            label_field=quick.get("label_field"),
            expert_field=quick["expert_field"],
            expert_cost=quick["expert_cost"],
            target_agreement=quick.get("target_agreement"),
            embeddings=bool(quick.get("embeddings")),
            format=format,
            seed=seed or 0,
        )
        base = Path.cwd()
    else:
        raise ConfigError(
            f"give INPUT (quick mode) or CONFIG INPUT; got {len(args)} arguments: {' '.join(args)}"
        )
    if seed is not None:
        cfg.seed = seed
    if batch_size is not None:
        cfg.batch_size = batch_size
    if checkpoint_every is not None:
        cfg.checkpoint.every_items = checkpoint_every
    if checkpoint_seconds is not None:
        cfg.checkpoint.every_seconds = checkpoint_seconds
    if str(output) == "-":
        raise ConfigError(
            "OUTPUT must be a file (resuming truncates it to the last checkpoint)", field="--output"
        )
    out = Path(output)
    return RunPlan(
        config=cfg,
        input=input_arg,
        output=out,
        store=store or resolve_path(cfg.store, base) or Path(f"{out}.tiered.sqlite"),
        rejects=rejects or resolve_path(cfg.rejects, base) or Path(f"{out}.rejects.jsonl"),
        replay_out=replay_out or resolve_path(cfg.replay_out, base),
        report=report,
        fresh=fresh,
        limit=limit,
        progress=progress,
        throttle_s=throttle_s,
        base_dir=base,
        config_path=config_path,
    )


@app.command("run")
def run_cmd(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="[CONFIG] INPUT",
            help="Run config (YAML) and INPUT, or INPUT alone in quick mode. INPUT is JSONL, "
            "CSV, Parquet or - (stdin).",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (.jsonl or .csv).")],
    text_field: Annotated[
        str | None, typer.Option("--text-field", help="Quick mode: the text field (default: text).")
    ] = None,
    id_field: Annotated[
        str | None,
        typer.Option("--id-field", help="Quick mode: the id field (default: line or row number)."),
    ] = None,
    label_field: Annotated[
        str | None,
        typer.Option("--label-field", help="Quick mode: a gold label, for accuracy only."),
    ] = None,
    expert_field: Annotated[
        str | None,
        typer.Option("--expert-field", help="Quick mode: the column with the expert's label."),
    ] = None,
    expert_cost: Annotated[
        float | None,
        typer.Option("--expert-cost", min=0, help="Quick mode: USD per expert answer."),
    ] = None,
    target_agreement: Annotated[
        float | None,
        typer.Option("--target-agreement", help="Quick mode: agreement with the expert to hold."),
    ] = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings", help="Quick mode: add the sentence-embedding stage.")
    ] = False,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Input format: jsonl, csv or parquet (default: by extension; stdin: jsonl).",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report (plots over time) here.")
    ] = None,
    replay_out: Annotated[
        Path | None,
        typer.Option(
            "--replay-out",
            help="Record every stage's answers as a replay log (for `tiered calibrate`).",
        ),
    ] = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="State store (default: OUTPUT.tiered.sqlite).")
    ] = None,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="Reject file (default: OUTPUT.rejects.jsonl).")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore saved state: start over (truncates OUTPUT).")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=0, help="Stop after the first N input records (in total, over resumes)."
        ),
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No live progress bar.")
    ] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: 0).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Items per batch (default: 256).")
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", min=1, help="Checkpoint every N items (default: 2000)."),
    ] = None,
    checkpoint_seconds: Annotated[
        float | None,
        typer.Option(
            "--checkpoint-seconds", min=0.001, help="... or every T seconds (default: 10)."
        ),
    ] = None,
    throttle: Annotated[float, typer.Option("--throttle", hidden=True, min=0)] = 0.0,
) -> None:
    """Label a stream with the cheapest stage that answers well; resumable after a kill.

    Running the same command again continues from the last checkpoint: every input record
    is answered (or rejected) exactly once. --fresh starts over. From stdin, a re-run
    skips as many records as the first run committed.
    """
    from rich.console import Console

    plan = make_plan(
        args,
        output,
        quick={
            "text_field": text_field,
            "id_field": id_field,
            "label_field": label_field,
            "expert_field": expert_field,
            "expert_cost": expert_cost,
            "target_agreement": target_agreement,
            "embeddings": embeddings,
        },
        format=format,
        seed=seed,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        store=store,
        rejects=rejects,
        replay_out=replay_out,
        report=report,
        fresh=fresh,
        limit=limit,
        progress=not no_progress,
        throttle_s=throttle,
    )
    console = Console()
    err = Console(stderr=True)
    summary = StreamRun(plan, console, err).run()
    print_summary(console, summary)
    console.print(f"output: {plan.output}   state: {plan.store}")
    if plan.report is not None:
        console.print(f"report written to {plan.report}")
    if summary.stopped_early:
        console.print("[yellow]stopped early[/]: run the same command again to continue")
        raise typer.Exit(130)


__all__ = [
    "RunPlan",
    "RunSummary",
    "StreamRun",
    "make_plan",
    "print_summary",
    "quick_config",
    "read_stats",
]
