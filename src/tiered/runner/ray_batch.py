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

Exactly once: a partition is done when its file exists; a re-run (after a kill, say)
skips the done ones and answers the others again, from scratch. The summary adds up the
counts of every partition file: one agreement estimate, with its interval, over every
audit any worker made, and over the sample's audits too (all drawn at the same rate).
Without Ray (``in_process``) the same steps run one after another here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.errors import ConfigError, ModelError, StoreError
from tiered.runner.files import field_map
from tiered.runner.ray_parts import (
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
from tiered.runner.ray_plan import LEARNED, BatchPlan, Manifest, OutDir, Partition, write_atomic
from tiered.runner.ray_stages import CheapStep, ExpertStep, StepSpec, freeze
from tiered.runner.summary import RunSummary
from tiered.store.state import decode_state, encode_state

if TYPE_CHECKING:
    import pyarrow as pa

    from tiered.io.sources import FieldMap
    from tiered.online.audit import AgreementEstimate
    from tiered.runner.plan import RunPlan
    from tiered.runner.ray_plan import InputFile

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
        self._done = 0  # partitions written, this session's and before
        self._total = 0

    def run(self) -> BatchResult:
        plan = self.plan
        t0 = time.perf_counter()
        out = OutDir(plan.outdir)
        out.lock()
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
            frozen, meta, learn_s = self._learned(out, manifest)
            sample = set(manifest.sample)
            rest = [p for p in pending if p.index not in sample]
            t1 = time.perf_counter()
            apply_items = self._apply(out, manifest, rest, frozen) if rest else 0
            apply_s = time.perf_counter() - t1 if rest else 0.0
            tallies = {p.index: read_tally(out.part_path(p)) for p in manifest.partitions}
            old = total(t for i, t in tallies.items() if i in before)
            scale = total(t for i, t in tallies.items() if i not in sample)
        finally:
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
            at_scale=self._estimate(scale) if scale.counters.items else None,
        )

    # -- learning ------------------------------------------------------------------------------

    def _read(self, manifest: Manifest, part: Partition) -> pa.Table:
        files = manifest.files
        return read_partition(part, files[part.file], self.fields, len(files) > 1)

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

    def _apply(self, out: OutDir, manifest: Manifest, rest: list[Partition], frozen: bytes) -> int:
        """Answer ``rest`` with the frozen cascade; write each partition once it is whole."""
        plan = self.plan
        spec = StepSpec(
            frozen=frozen,
            base_dir=str(plan.base_dir),
            store=str(plan.store),
            config_path=str(plan.config_path) if plan.config_path else None,
        )
        tables: Generator[pa.Table, None, None]
        if plan.in_process:
            tables = self._in_process(manifest, rest, spec)
        else:
            tables = self._on_ray(manifest, rest, spec)
        try:
            return self._collect(out, rest, tables)
        finally:
            tables.close()  # stops Ray now, not when the generator is collected

    def _in_process(
        self, manifest: Manifest, rest: list[Partition], spec: StepSpec
    ) -> Generator[pa.Table, None, None]:
        n_cheap = len(self.plan.config.cheap)
        steps: list[Callable[[pa.Table], pa.Table]] = [CheapStep(spec, k) for k in range(n_cheap)]
        steps.append(ExpertStep(spec))
        for part in rest:
            table = self._read(manifest, part)
            for step in steps:
                table = step(table)
            yield table

    def _on_ray(
        self, manifest: Manifest, rest: list[Partition], spec: StepSpec
    ) -> Generator[pa.Table, None, None]:
        import ray.data
        from ray.data import ActorPoolStrategy

        plan = self.plan
        with ray_session(plan.ray_address) as cpus:
            n_cheap = len(plan.config.cheap)
            # every stage's pool (and the reads) must be able to start at once
            actor_cpus = plan.actor_cpus or min(1.0, round(0.9 * cpus / (n_cheap + 2), 2))
            most = plan.max_actors or max(1, int(cpus))
            self.engine = f"ray ({plan.ray_address or 'local'}, {cpus:g} CPUs)"
            pool: dict[str, Any] = {
                "compute": ActorPoolStrategy(min_size=1, max_size=most),
                "num_cpus": actor_cpus,
                "batch_size": None,
                "batch_format": "pyarrow",
            }
            ds: ray.data.Dataset = ray.data.from_items(
                [{"part": p.index} for p in rest], override_num_blocks=len(rest)
            )
            ds = ds.map_batches(
                read_rows,  # type: ignore[arg-type]  # its other arguments are fn_kwargs
                fn_kwargs={
                    "parts": {p.index: p for p in rest},
                    "files": manifest.files,
                    "fields": self.fields,
                },
                batch_size=1,
                batch_format="pyarrow",
                num_cpus=actor_cpus,  # as the stages ask: Ray fuses it into the first one
            )
            for k in range(n_cheap):
                ds = ds.map_batches(CheapStep, fn_constructor_args=(spec, k), **pool)
            ds = ds.map_batches(ExpertStep, fn_constructor_args=(spec,), **pool)
            yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")

    def _collect(self, out: OutDir, rest: list[Partition], tables: Iterator[pa.Table]) -> int:
        """Gather rows by partition; write each once it holds all its rows."""
        import pyarrow as pa

        by_index = {p.index: p for p in rest}
        waiting: dict[int, list[pa.Table]] = {}
        have: dict[int, int] = {}
        written: set[int] = set()
        items = 0
        for table in tables:
            if table.num_rows == 0:
                continue
            parts = column(table, "_part")
            for i in np.unique(parts).tolist():
                piece = table if parts[0] == parts[-1] == i else table.filter(parts == i)
                if i not in by_index or i in written:
                    raise ModelError(f"rows of partition {i} came back unasked or twice")
                waiting.setdefault(i, []).append(piece)
                have[i] = have.get(i, 0) + piece.num_rows
                want = int(piece.column("_n")[0].as_py())
                if have[i] < want:
                    continue
                if have[i] > want:
                    raise ModelError(f"partition {i} came back with {have[i]} rows for {want}")
                final = pa.concat_tables(waiting.pop(i))
                items += final.column("reject").null_count  # the rest are rejects
                self._write(out, by_index[i], final)
                written.add(i)
        if waiting:
            raise ModelError(f"partitions {sorted(waiting)} came back incomplete")
        for part in rest:  # no rows came back: nothing in its range (an empty file, say)
            if part.index not in written:
                self._write(out, part, make_table({}, FINAL))
        return items

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


def read_rows(
    batch: pa.Table, parts: dict[int, Partition], files: list[InputFile], fields: FieldMap
) -> pa.Table:
    """Ray's read step: the records of the partitions named in ``batch``."""
    import pyarrow as pa

    tables = [
        read_partition(parts[i], files[parts[i].file], fields, len(files) > 1)
        for i in batch.column("part").to_pylist()
    ]
    return pa.concat_tables(tables)


@contextmanager
def ray_session(address: str | None) -> Iterator[float]:
    """Ray for one run, and the CPUs it has: a local Ray started here (stopped at the end)
    when ``address`` is None, else the cluster at ``address`` (``auto``, ``ray://...``)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "tiered batch runs on Ray: pip install 'tiered[ray]' (or pass --in-process)",
            field="--ray",
        ) from exc
    import ray.data

    if ray.is_initialized():  # the caller's own session: use it, leave it running
        yield _cpus(ray)
        return
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count() or 1, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot reach Ray at {address}: {exc}", field="--ray") from exc
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        yield _cpus(ray)
    finally:
        ray.shutdown()


def _cpus(ray: Any) -> float:
    """The CPUs of the Ray session (Ray's own function is untyped)."""
    resources: dict[str, float] = ray.cluster_resources()
    return float(resources.get("CPU", 1))


__all__ = ["BatchResult", "BatchRun", "PartitionDone", "ray_session", "read_rows"]
