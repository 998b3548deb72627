"""A batch run on Ray Data: learn on a sample, freeze, answer the rest at scale.

:class:`BatchRun` works through the partitions of :mod:`tiered.runner.ray_plan`:

1. **Learn.** The online cascade of the config (the one ``tiered run`` builds) answers
   the sample's partitions in this process, learning as it goes; their answers are
   written like every other partition's. Then what it learned is frozen
   (:func:`~tiered.runner.ray_stages.freeze`) and saved in OUTDIR.
2. **Apply.** The other partitions go through a Ray Data pipeline: a read step (one
   task per partition), one ``map_batches`` step per cheap stage and one for the expert,
   each a pool of actors that load their stage once (:mod:`tiered.runner.ray_stages`).
   A row a stage accepts rides along untouched; the rest go on to the next stage.
   Audits go on at scale: each accepted answer goes to the expert too with probability
   ``online.audit_rate``.
3. **Write.** The answers stream back to this process, which writes each partition's
   Parquet file once all its rows are in (atomically), with its counts in the file.

A local Ray takes seconds to start (:mod:`tiered.runner.ray_start`), so it starts in the
background as the run begins, and this process does not wait for it: it answers
partitions itself with the same frozen steps, from the last one back, while Ray starts and
whenever it has nothing from Ray to write; Ray's pipeline takes them from the front. Each
partition is read by whoever claims it first (:func:`~tiered.runner.ray_plan.claim`).
When this process would be done before Ray's pipeline could answer anything
(:data:`PIPELINE_START_S`), the pipeline is not started. ``--ray-only`` leaves every
partition to Ray.

Exactly once: a partition is done when its file exists; a re-run (after a kill, say)
skips the done ones and answers the others again, from scratch. The summary adds up the
counts of every partition file: one agreement estimate, with its interval, over every
audit any worker made, and over the sample's audits too (all drawn at the same rate).
Without Ray (``in_process``) the same steps run one after another here.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.errors import ModelError, StoreError
from tiered.runner.files import field_map
from tiered.runner.ray_parts import (
    COLUMNS,
    FINAL,
    Tally,
    column,
    decisions_table,
    items_of,
    make_table,
    open_rows,
    read_partition,
    read_tally,
    total,
    write_partition,
)
from tiered.runner.ray_plan import (
    LEARNED,
    BatchPlan,
    Manifest,
    OutDir,
    Partition,
    claim,
    write_atomic,
)
from tiered.runner.ray_stages import CheapStep, ExpertStep, StepSpec, freeze
from tiered.runner.ray_start import RayFeed, RayStart
from tiered.runner.summary import RunSummary
from tiered.store.state import decode_state, encode_state

if TYPE_CHECKING:
    import pyarrow as pa

    from tiered.io.sources import FieldMap
    from tiered.online.audit import AgreementEstimate
    from tiered.runner.plan import RunPlan
    from tiered.runner.ray_plan import InputFile

# Ray's pipeline takes at least about this long to answer its first partition (its
# actors start, load their stage): not worth starting when this process would be done
# sooner (a pipeline started is waited for to its end: Ray is never stopped under it)
PIPELINE_START_S = 8.0

PartitionDone = Callable[[int, int], None]
"""Told (partitions done, partitions in all) after each partition is written."""


@dataclass
class BatchResult:
    """What a batch run did: the summary over every partition, and this session's work.

    ``learned_records``: records in the learning sample; ``learn_s``: seconds this session
    spent learning (0 when the frozen cascade was saved by an earlier one).
    ``apply_items`` / ``apply_s``: items answered at scale this session and the seconds
    it took (Ray's start included). ``at_scale``: the agreement of the frozen cascade's
    answers alone (every partition but the sample's), from their audits: the summary's
    estimate pools them with the sample's, where the cascade learned as it went (and a
    frozen cascade may do worse than that on data it never saw).
    """

    summary: RunSummary
    partitions: int
    done_before: int
    written: int
    learned_records: int
    learn_s: float
    apply_items: int
    apply_s: float
    engine: str
    at_scale: AgreementEstimate | None = None
    local_items: int = 0

    @property
    def apply_items_per_s(self) -> float:
        return self.apply_items / self.apply_s if self.apply_s > 0 else math.nan


class BatchRun:
    """One session of a batch run over ``plan`` (see the module docstring)."""

    def __init__(self, plan: BatchPlan, *, on_partition: PartitionDone | None = None) -> None:
        self.plan = plan
        self.on_partition = on_partition
        self.fields: FieldMap = field_map(plan.config.input)
        self.engine = "in-process" if plan.in_process else "ray"
        self.local_items = 0  # items this process answered while Ray ran
        self.session = secrets.token_hex(6)  # names this run's claims
        self._done = 0  # partitions written, this session's and before
        self._total = 0

    def run(self) -> BatchResult:
        plan = self.plan
        t0 = time.perf_counter()
        out = OutDir(plan.outdir)
        out.lock()
        # Ray starts while the input is cut and the cascade learns (and this process
        # answers partitions): closed at once if there turns out to be nothing for it
        start = None if plan.in_process else RayStart(plan.ray_address)
        try:
            manifest = out.open(plan)
            before = out.finished(manifest)
            if not set(manifest.sample) <= before or not (out.path / LEARNED).exists():
                # the sample is done once the frozen cascade is saved after its files: a run
                # killed while learning learns again from the start, answering it anew
                (out.path / LEARNED).unlink(missing_ok=True)
                before -= set(manifest.sample)
            pending = [p for p in manifest.partitions if p.index not in before]
            out.forget(pending)
            self._done = len(before)
            self._total = len(manifest.partitions)
            sample = set(manifest.sample)
            rest = [p for p in pending if p.index not in sample]
            if start is not None and not rest:
                start.close()
                start = None
            try:
                frozen, meta, learn_s = self._learned(out, manifest)
                t1 = time.perf_counter()
                apply_items = self._apply(out, manifest, rest, frozen, start) if rest else 0
            finally:
                if start is not None:
                    start.close()  # Ray's shutdown counts in the time at scale
                    start = None
                out.release_claims()
            apply_s = time.perf_counter() - t1 if rest else 0.0
            tallies = {p.index: read_tally(out.part_path(p)) for p in manifest.partitions}
            old = total(t for i, t in tallies.items() if i in before)
            scale = total(t for i, t in tallies.items() if i not in sample)
        finally:
            if start is not None:
                start.close()
            out.close()
        every = total(tallies.values())
        summary = self._summary(every, old, meta, time.perf_counter() - t0, bool(before))
        return BatchResult(
            summary=summary,
            partitions=len(manifest.partitions),
            done_before=len(before),
            written=len(manifest.partitions) - len(before),
            learned_records=int(meta["records"]),
            learn_s=learn_s,
            apply_items=apply_items,
            apply_s=apply_s,
            engine=self.engine,
            local_items=self.local_items,
            at_scale=self._estimate(scale) if scale.counters.items else None,
        )

    # -- learning ------------------------------------------------------------------------------

    def _read(self, manifest: Manifest, part: Partition) -> pa.Table:
        files = manifest.files
        dups = set(manifest.duplicates.get(part.index, ()))
        return read_partition(part, files[part.file], self.fields, len(files) > 1, dups)

    def _learned(self, out: OutDir, manifest: Manifest) -> tuple[bytes, dict[str, Any], float]:
        """The frozen cascade (saved, or learned now on the sample), what learning cost
        (``meta``) and the seconds spent learning now."""
        path = out.path / LEARNED
        if path.exists():
            saved = decode_state(path.read_bytes(), what=str(path))
            if not isinstance(saved, dict) or saved.get("config_hash") != manifest.config_hash:
                raise StoreError(f"{path} was learned with another config; pass --fresh")
            return encode_state(saved["frozen"]), saved["meta"], 0.0
        t0 = time.perf_counter()
        from tiered.runner.build import build_cascade

        plan = self.plan
        rc = build_cascade(self._run_plan())
        records = 0
        for i in manifest.sample:
            part = manifest.partitions[i]
            table = self._read(manifest, part)
            items = items_of(table, open_rows(table))
            decisions = rc.cascade.process(items) if items else []
            truth = list(rc.expert.model.predict(items).labels) if rc.expert_is_column else None
            final = decisions_table(table, decisions, truth)
            records += final.num_rows
            self._write(out, part, final)
        frozen = freeze(rc.cascade, plan.config)
        meta = {
            "records": records,
            "expert_calls": rc.cascade.expert_calls,
            "expert_usd": rc.cascade.expert_usd,
        }
        blob = encode_state({"config_hash": manifest.config_hash, "frozen": frozen, "meta": meta})
        write_atomic(path, lambda p: p.write_bytes(blob))
        return encode_state(frozen), meta, time.perf_counter() - t0

    def _run_plan(self) -> RunPlan:
        from tiered.runner.plan import RunPlan

        plan = self.plan
        return RunPlan(
            config=plan.config,
            input=str(plan.input),
            output=plan.outdir,
            store=plan.store,
            rejects=plan.outdir,
            base_dir=plan.base_dir,
            config_path=plan.config_path,
        )

    def _write(self, out: OutDir, part: Partition, final: pa.Table) -> None:
        write_partition(out, part, final, Tally.of(final))
        self._done += 1
        if self.on_partition is not None:
            self.on_partition(self._done, self._total)
        if self.plan.throttle_s > 0:
            time.sleep(self.plan.throttle_s)

    # -- at scale ------------------------------------------------------------------------------

    def _apply(
        self,
        out: OutDir,
        manifest: Manifest,
        rest: list[Partition],
        frozen: bytes,
        start: RayStart | None,
    ) -> int:
        """Answer ``rest`` with the frozen cascade; write each partition once it is whole."""
        plan = self.plan
        spec = StepSpec(
            frozen=frozen,
            base_dir=str(plan.base_dir),
            store=str(plan.store),
            config_path=str(plan.config_path) if plan.config_path else None,
        )
        gather = _Gather(self, out, rest)
        if start is None:
            steps = self._steps(spec)
            for part in rest:
                gather.local(part, self._answer(manifest, part, steps))
            return gather.finish()
        return self._shared(out, manifest, rest, spec, start, gather)

    def _steps(self, spec: StepSpec) -> list[Callable[[pa.Table], pa.Table]]:
        """The frozen cascade's steps, built in this process."""
        n_cheap = len(self.plan.config.cheap)
        steps: list[Callable[[pa.Table], pa.Table]] = [CheapStep(spec, k) for k in range(n_cheap)]
        steps.append(ExpertStep(spec))
        return steps

    def _answer(
        self, manifest: Manifest, part: Partition, steps: list[Callable[[pa.Table], pa.Table]]
    ) -> pa.Table:
        table = self._read(manifest, part)
        for step in steps:
            table = step(table)
        return table

    def _shared(
        self,
        out: OutDir,
        manifest: Manifest,
        rest: list[Partition],
        spec: StepSpec,
        start: RayStart,
        gather: _Gather,
    ) -> int:
        """Ray answers ``rest`` from the front, this process from the back.

        While Ray starts, this process answers partitions itself, from the last one
        back; once Ray is up, its pipeline gets the partitions not taken yet, in order,
        and this process keeps taking them from the back whenever no answers from Ray
        wait to be written. Whoever reads a partition first claims it (:func:`claim`),
        the other skips it.
        """
        todo = deque(rest)
        local = self.plan.local_share
        steps = self._steps(spec) if local else None
        feed: RayFeed | None = None
        wanted = True  # Ray's pipeline, until this process would finish before it starts
        spent, done_here = 0.0, 0  # seconds and partitions answered here
        try:
            while True:
                if feed is None and wanted and start.ready() and local and done_here:
                    # Ray's actors start about as slowly as Ray did (a busy machine)
                    need = max(PIPELINE_START_S, start.startup_s)
                    wanted = len(todo) * spent / done_here > need
                if feed is None and not (local and todo):
                    if local:  # this process answered everything while Ray started
                        self.engine = "in-process (Ray not needed)"
                        break
                    start.wait()
                if feed is None and wanted and start.ready():
                    cpus = start.wait()
                    self.engine = f"ray ({self.plan.ray_address or 'local'}, {cpus:g} CPUs)"
                    feed = RayFeed(self._dataset(manifest, list(todo), spec, cpus, out))
                if feed is not None:
                    for table in feed.ready():
                        gather.add(table)
                    if feed.done and not (local and todo):
                        break
                if steps is not None and todo:
                    part = todo.pop()
                    if claim(str(out.path), part.index, self.session):
                        t = time.perf_counter()
                        gather.local(part, self._answer(manifest, part, steps))
                        spent, done_here = spent + time.perf_counter() - t, done_here + 1
                        self.local_items += gather.last_items
                elif feed is not None and not feed.done:
                    table = feed.next(timeout=0.5)
                    if table is not None:
                        gather.add(table)
        finally:
            if feed is not None:
                feed.close()
        return gather.finish()

    def _dataset(
        self, manifest: Manifest, parts: list[Partition], spec: StepSpec, cpus: float, out: OutDir
    ) -> Any:
        """The Ray Data pipeline over ``parts``: a read step, then a pool per stage."""
        import ray.data
        from ray.data import ActorPoolStrategy

        plan = self.plan
        n_cheap = len(plan.config.cheap)
        # every stage's pool (and the reads) must be able to start at once
        actor_cpus = plan.actor_cpus or min(1.0, round(0.9 * cpus / (n_cheap + 2), 2))
        most = plan.max_actors or max(1, int(cpus))
        pool: dict[str, Any] = {
            "compute": ActorPoolStrategy(min_size=1, max_size=most),
            "num_cpus": actor_cpus,
            "batch_size": None,
            "batch_format": "pyarrow",
        }
        ours = [p.index for p in parts]
        ds: ray.data.Dataset = ray.data.from_items(
            [{"part": i} for i in ours], override_num_blocks=len(parts)
        )
        ds = ds.map_batches(
            read_rows,  # type: ignore[arg-type]  # its other arguments are fn_kwargs
            fn_kwargs={
                "parts": {p.index: p for p in parts},
                "files": manifest.files,
                "fields": self.fields,
                "outdir": str(out.path),
                "session": self.session,
                "duplicates": {i: manifest.duplicates[i] for i in ours if i in manifest.duplicates},
            },
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=actor_cpus,  # as the stages ask: Ray fuses it into the first one
        )
        for k in range(n_cheap):
            ds = ds.map_batches(CheapStep, fn_constructor_args=(spec, k), **pool)
        return ds.map_batches(ExpertStep, fn_constructor_args=(spec,), **pool)

    # -- the summary ---------------------------------------------------------------------------

    def _estimate(self, tally: Tally) -> AgreementEstimate:
        """The agreement estimate from a tally's audit counts (:mod:`tiered.online.audit`)."""
        from tiered.online.audit import estimate_agreement

        on, a = self.plan.config.online, tally.audit
        n_expert = a.get("stage:expert", 0)
        n_all = sum(v for k, v in a.items() if k.startswith("stage:"))
        return estimate_agreement(
            n_expert,
            n_all - n_expert,
            a.get("audits", 0),
            a.get("agree", 0),
            confidence=on.confidence,
            method=on.ci_method,
        )

    def _summary(
        self, total: Tally, old: Tally, meta: dict[str, Any], wall: float, resumed: bool
    ) -> RunSummary:
        cfg = self.plan.config
        c = total.counters
        n = c.items
        names = [s.stage_name for s in cfg.cheap] + ["expert"]
        est = self._estimate(total)
        calls = total.expert_calls + int(meta["expert_calls"])
        usd = total.expert_usd + float(meta["expert_usd"])
        per_call = usd / calls if calls else 0.0
        agreement = None if math.isnan(est.agreement) else est.agreement
        return RunSummary(
            records=c.records,
            items=n,
            rejects=c.rejects,
            expert_calls=calls,
            expert_share=calls / n if n else 0.0,
            audits=est.audits,
            agreement=agreement,
            ci_low=est.low if agreement is not None else None,
            ci_high=est.high if agreement is not None else None,
            target=cfg.online.target_agreement,
            usd_spent=total.usd,
            usd_expert_only=per_call * n,
            wall_s=wall,
            stage_share={k: c.stage_counts.get(k, 0) / n if n else 0.0 for k in names},
            accuracy=c.ratio(c.gold_correct, c.gold_n),
            expert_accuracy=c.ratio(c.expert_gold_correct, c.expert_gold_n),
            true_agreement=c.ratio(c.truth_agree, c.truth_n),
            resumed_at=old.counters.records if resumed else None,
            session_items=n - old.counters.items,
            session_s=wall,
            output=str(self.plan.outdir),
            rejects_path=str(self.plan.outdir / "rejects"),
            store=str(self.plan.store),
        )


class _Gather:
    """Rows by partition, from Ray or this process: each partition is written once it
    holds all its rows, the first time only (a partition two workers answered: see
    :func:`~tiered.runner.ray_plan.claim`)."""

    def __init__(self, run: BatchRun, out: OutDir, parts: list[Partition]) -> None:
        self.run = run
        self.out = out
        self.by_index = {p.index: p for p in parts}
        self.waiting: dict[int, list[pa.Table]] = {}
        self.have: dict[int, int] = {}
        self.written: set[int] = set()
        self.from_ray: set[int] = set()
        self.items = 0
        self.last_items = 0  # items of the partition written last

    def add(self, table: pa.Table) -> None:
        """Rows from Ray (of one or more partitions, maybe not all of their rows)."""
        import pyarrow as pa

        if table.num_rows == 0:
            return
        parts = column(table, "_part")
        for i in np.unique(parts).tolist():
            if i not in self.by_index or i in self.from_ray:
                raise ModelError(f"rows of partition {i} came back unasked or twice")
            if i in self.written:  # this process answered it too
                continue
            piece = table if parts[0] == parts[-1] == i else table.filter(parts == i)
            self.waiting.setdefault(i, []).append(piece)
            self.have[i] = self.have.get(i, 0) + piece.num_rows
            want = int(piece.column("_n")[0].as_py())
            if self.have[i] < want:
                continue
            if self.have[i] > want:
                raise ModelError(f"partition {i} came back with {self.have[i]} rows for {want}")
            self.from_ray.add(i)
            self._write(self.by_index[i], pa.concat_tables(self.waiting.pop(i)))

    def local(self, part: Partition, final: pa.Table) -> None:
        """A partition answered in this process."""
        self.last_items = 0
        if part.index not in self.written:
            self.waiting.pop(part.index, None)
            self._write(part, final)

    def _write(self, part: Partition, final: pa.Table) -> None:
        self.last_items = final.column("reject").null_count  # the rest are rejects
        self.items += self.last_items
        self.run._write(self.out, part, final)
        self.written.add(part.index)

    def finish(self) -> int:
        """Every partition written (those no rows came back for: nothing in their range,
        an empty file say); the items answered."""
        if self.waiting:
            raise ModelError(f"partitions {sorted(self.waiting)} came back incomplete")
        for part in self.by_index.values():
            if part.index not in self.written:
                self._write(part, make_table({}, FINAL))
        return self.items


def read_rows(
    batch: pa.Table,
    parts: dict[int, Partition],
    files: list[InputFile],
    fields: FieldMap,
    outdir: str,
    session: str,
    duplicates: dict[int, list[int]],
) -> pa.Table:
    """Ray's read step: the records of the partitions named in ``batch`` that nobody
    claimed before (:func:`~tiered.runner.ray_plan.claim`)."""
    import pyarrow as pa

    many = len(files) > 1
    tables = [
        read_partition(parts[i], files[parts[i].file], fields, many, set(duplicates.get(i, ())))
        for i in batch.column("part").to_pylist()
        if claim(outdir, i, session)
    ]
    return pa.concat_tables(tables) if tables else make_table({}, COLUMNS)


__all__ = ["BatchResult", "BatchRun", "PartitionDone", "read_rows"]
