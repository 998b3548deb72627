"""What a batch run does, and where it stands: :class:`BatchPlan`, partitions, OUTDIR.

A batch run cuts its input (one file, or every JSONL/CSV/Parquet file under a folder,
in path order) into **partitions** of ``partition_records`` records each: ranges of
record offsets within one file (offsets as :mod:`tiered.io.sources` counts them: the
line index for JSONL, the data-row index for CSV and Parquet). The cut depends only on
the input and that setting, so it is the same on every run; each partition's answers go
to one file, ``OUTDIR/part-NNNNNN.parquet``, written to a temporary name and renamed
into place (atomic), which marks the partition done.

OUTDIR also holds:

- ``_batch.json``: the manifest (config hash, input files with their sizes and modified
  times, partitions, the learning sample, the records whose id an earlier one had). A
  re-run with other ones is refused; pass ``--fresh`` to start over (it deletes tiered's
  own files in OUTDIR, nothing else).
- ``_learned.tiered``: the frozen cascade learned on the sample (arrays + JSON,
  :mod:`tiered.store.state`), written after the sample's partitions.
- ``rejects/part-NNNNNN.jsonl``: the records of a partition that could not be read,
  written before the partition's Parquet file.
- ``_batch.lock``: held while a run works on OUTDIR (a second run is refused).
- ``.part-NNNNNN.*.claim``: while a run works, who answers the partition (:func:`claim`).
- ``_tiered.sqlite``: the LLM stages' response cache (a re-run does not pay twice).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from tiered.errors import ConfigError, DataError, StoreError
from tiered.io.sources import FORMATS, detect_format

if TYPE_CHECKING:
    import pyarrow as pa

    from tiered.config.run import RunConfig
    from tiered.io.sources import FieldMap

MANIFEST = "_batch.json"
LEARNED = "_learned.tiered"
LOCK = "_batch.lock"
STORE = "_tiered.sqlite"
REJECTS = "rejects"
MANIFEST_FORMAT = "tiered-batch"
MANIFEST_VERSION = 1
_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq")


@dataclass
class BatchPlan:
    """A resolved ``tiered batch`` invocation: the config plus every path and switch.

    ``ray_address``: None starts a local Ray for the run (stopped at its end); ``auto``
    or ``ray://HOST:PORT`` joins a running cluster. ``in_process``: no Ray at all, the
    same steps run one after the other in this process (small inputs, comparisons).
    ``actor_cpus``: CPUs each stage's actor asks Ray for (None: what fits the cluster);
    ``max_actors``: the most actors per stage (None: as many as the CPUs allow).
    ``local_share``: this process answers partitions too, from the last one back, while
    Ray starts and whenever it has no answers from Ray to write (False: Ray answers all).
    """

    config: RunConfig
    input: Path
    outdir: Path
    base_dir: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None
    partition_records: int = 10_000
    learn_records: int = 5_000
    fresh: bool = False
    ray_address: str | None = None
    in_process: bool = False
    actor_cpus: float | None = None
    max_actors: int | None = None
    local_share: bool = True
    throttle_s: float = 0.0

    @property
    def store(self) -> Path:
        return self.outdir / STORE


def make_batch_plan(
    config_path: Path, input: Path, outdir: Path, *, format: str | None = None, **switches: Any
) -> BatchPlan:
    """The plan of ``tiered batch CONFIG INPUT -o OUTDIR``: the run config (as for
    ``tiered run``; relative paths in it from its folder), paths made absolute (Ray's
    workers do not share this process's working folder), ``switches`` as given."""
    from tiered.config.run import load_run_config

    cfg = load_run_config(config_path)
    if format is not None:
        cfg.input.format = format  # type: ignore[assignment]
    return BatchPlan(
        config=cfg,
        input=input.expanduser().resolve(),
        outdir=outdir.expanduser().resolve(),
        base_dir=config_path.resolve().parent,
        config_path=config_path.resolve(),
        **switches,
    )


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file, as the manifest knows it (a changed file refuses a re-run)."""

    path: str
    name: str  # relative to INPUT (a folder), or the file's name
    format: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Partition:
    """Records ``[start, end)`` of one file (``end`` None: to its end)."""

    index: int
    file: int
    start: int
    end: int | None

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}"

    def to_json(self) -> list[int | None]:
        return [self.file, self.start, self.end]


@dataclass
class Manifest:
    """What a batch run over OUTDIR is: checked on every re-run."""

    config_hash: str
    partition_records: int
    learn_records: int
    files: list[InputFile]
    partitions: list[Partition]
    sample: list[int]  # the partitions the cascade learns on, in order
    # offsets, by partition, of records whose id an earlier record of the input had
    duplicates: dict[int, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "config_hash": self.config_hash,
            "partition_records": self.partition_records,
            "learn_records": self.learn_records,
            "files": [asdict(f) for f in self.files],
            "partitions": [p.to_json() for p in self.partitions],
            "sample": self.sample,
            "duplicates": {str(k): v for k, v in self.duplicates.items()},
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Manifest:
        try:
            if data["format"] != MANIFEST_FORMAT or data["version"] != MANIFEST_VERSION:
                raise ValueError(f"format {data['format']!r} version {data['version']!r}")
            return cls(
                config_hash=str(data["config_hash"]),
                partition_records=int(data["partition_records"]),
                learn_records=int(data["learn_records"]),
                files=[InputFile(**f) for f in data["files"]],
                partitions=[Partition(i, *p) for i, p in enumerate(data["partitions"])],
                sample=[int(i) for i in data["sample"]],
                duplicates={
                    int(k): [int(o) for o in v] for k, v in data.get("duplicates", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"{path} is not a manifest this version of tiered can read ({exc}); "
                "pass --fresh to start over"
            ) from exc


# -- the input ---------------------------------------------------------------------------------


def input_files(plan: BatchPlan) -> list[InputFile]:
    """INPUT itself, or every data file under the folder INPUT (not under OUTDIR), sorted."""
    root = plan.input
    fmt = plan.config.input.format
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        out = plan.outdir.resolve()
        paths = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and _is_data(p)
            and out not in p.resolve().parents
        )
        if not paths:
            raise DataError(
                f"no {', '.join(FORMATS)} files in this folder (by their extension)",
                path=str(root),
            )
    else:
        raise DataError("input file or folder not found", path=str(root))
    files = []
    for p in paths:
        st = p.stat()
        name = p.name if p == root else p.relative_to(root).as_posix()
        files.append(
            InputFile(
                str(p.resolve()), name, detect_format(str(p), fmt), st.st_size, st.st_mtime_ns
            )
        )
    return files


def _is_data(p: Path) -> bool:
    name = p.name.lower().removesuffix(".gz")
    return name.endswith(_SUFFIXES)


def count_records(f: InputFile) -> int:
    """Records in a file, for cutting it: Parquet from its metadata, else a line count
    (for CSV an estimate: a quoted cell may hold line breaks; the last partition of a
    file reads to its end whatever the count)."""
    if f.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(f.path).metadata.num_rows)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet: {exc}", path=f.path) from None
    lines, last = 0, b"\n"
    with _open(f.path) as handle:
        while chunk := handle.read(1 << 22):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    return max(lines - (f.format == "csv"), 0)


def _open(path: str) -> IO[bytes]:
    if path.lower().endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def cut(files: list[InputFile], per_part: int) -> list[Partition]:
    """Every file in ranges of ``per_part`` records; each file's last range is open."""
    parts: list[Partition] = []
    for i, f in enumerate(files):
        n = count_records(f)
        starts = list(range(0, max(n, 1), per_part))
        for j, s in enumerate(starts):
            end = None if j == len(starts) - 1 else s + per_part
            parts.append(Partition(len(parts), i, s, end))
    return parts


def choose_sample(parts: list[Partition], per_part: int, learn: int) -> list[int]:
    """Partitions spread evenly over the input (the middle of each of ``k`` equal
    stretches), ``k`` whole partitions to hold about ``learn`` records."""
    if learn <= 0 or not parts:
        return []
    k = min(len(parts), -(-learn // per_part))
    return [int((i + 0.5) * len(parts) / k) for i in range(k)]


def find_duplicates(
    files: list[InputFile], parts: list[Partition], fields: FieldMap
) -> dict[int, list[int]]:
    """Offsets, by partition, of the records whose id an earlier record had (in input
    order, over every file): they are rejected, as ``tiered run`` does, wherever they are
    answered. Only with an id field: line and row numbers are unique anyway."""
    if fields.id_field is None or _all_distinct(files, fields.id_field):
        return {}
    from tiered.io.seen_ids import SeenIds
    from tiered.io.sources import open_source

    seen = SeenIds()
    found: dict[int, list[int]] = {}
    by_file: dict[int, list[Partition]] = {}
    for p in parts:
        by_file.setdefault(p.file, []).append(p)
    for i, f in enumerate(files):
        starts = [p.start for p in by_file.get(i, [])]
        for b in open_source(f.path, fields, format=f.format).batches(batch_size=8192):
            dup = seen.add([it.id for it in b.items])
            for k in np.flatnonzero(dup).tolist():
                offset = b.offsets[k]
                part = by_file[i][bisect.bisect_right(starts, offset) - 1]
                found.setdefault(part.index, []).append(offset)
    return found


def _all_distinct(files: list[InputFile], id_field: str) -> bool:
    """Whether the ids of every file are all different, read fast by Arrow (False: some
    repeat, or Arrow cannot tell: the records are then read one by one)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        ids = pa.chunked_array(
            [c for f in files for c in _id_column(f, id_field).chunks], pa.string()
        )
    except (OSError, KeyError, pa.ArrowException):
        return False
    return int(pc.count_distinct(ids).as_py()) == int(pc.count(ids).as_py())


def _id_column(f: InputFile, id_field: str) -> pa.ChunkedArray:
    """The id column of a file, as strings (ints as ``tiered run`` reads them)."""
    import pyarrow as pa

    if f.format == "parquet":
        import pyarrow.parquet as pq

        col = pq.read_table(f.path, columns=[id_field]).column(id_field)
    elif f.format == "csv":
        import pyarrow.csv as pcsv

        conv = pcsv.ConvertOptions(include_columns=[id_field], column_types={id_field: pa.string()})
        parse = pcsv.ParseOptions(newlines_in_values=True)
        col = pcsv.read_csv(f.path, parse_options=parse, convert_options=conv).column(id_field)
    else:
        import pyarrow.json as pj

        col = None
        for kind in (pa.string(), pa.int64()):  # a column of either kind, not mixed
            parse = pj.ParseOptions(
                explicit_schema=pa.schema([(id_field, kind)]), unexpected_field_behavior="ignore"
            )
            try:
                with pa.input_stream(f.path, compression="detect") as stream:
                    col = pj.read_json(stream, parse_options=parse).column(id_field)
                break
            except pa.ArrowInvalid:
                continue
        if col is None:
            raise KeyError(id_field)
    if not (pa.types.is_string(col.type) or pa.types.is_integer(col.type)):
        raise KeyError(id_field)  # what tiered reads as no id (a float, say): one by one
    return col.cast(pa.string())


def make_manifest(plan: BatchPlan, files: list[InputFile]) -> Manifest:
    """The manifest of a new run: ``files`` cut into partitions, the sample chosen, the
    duplicate ids found."""
    from tiered.runner.files import field_map

    parts = cut(files, plan.partition_records)
    return Manifest(
        config_hash=plan.config.identity_hash(),
        partition_records=plan.partition_records,
        learn_records=plan.learn_records,
        files=files,
        partitions=parts,
        sample=choose_sample(parts, plan.partition_records, plan.learn_records),
        duplicates=find_duplicates(files, parts, field_map(plan.config.input)),
    )


# -- OUTDIR ------------------------------------------------------------------------------------


def write_atomic(path: Path, write: Any) -> None:
    """``write(tmp_path)``, fsync, rename to ``path``: a reader sees all of it or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class OutDir:
    """OUTDIR of a batch run: locked while open; its manifest, finished partitions, files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: int | None = None

    def lock(self) -> None:
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / REJECTS).mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {self.path}: {exc.strerror}", field="--output"
            ) from None
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another tiered batch run is writing {self.path}") from None
        self._lock = fd

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def part_path(self, part: Partition) -> Path:
        return self.path / f"{part.name}.parquet"

    def rejects_path(self, part: Partition) -> Path:
        return self.path / REJECTS / f"{part.name}.jsonl"

    def _ours(self) -> Iterator[Path]:
        """Every file tiered writes in OUTDIR (temporary ones too), the lock excepted."""
        patterns = ("part-*.parquet", ".part-*.tmp", ".part-*.claim", f".{LEARNED}.tmp")
        for pattern in (*patterns, f".{MANIFEST}.tmp"):
            yield from self.path.glob(pattern)
        yield from (self.path / REJECTS).glob("*part-*")
        for name in (LEARNED, MANIFEST, STORE, f"{STORE}-wal", f"{STORE}-shm"):
            if (self.path / name).exists():
                yield self.path / name

    def open(self, plan: BatchPlan) -> Manifest:
        """The manifest to work by: the saved one, which must be of the same run, or a new
        one (``plan.fresh``: after deleting what OUTDIR held); temporary files of a killed
        run are removed."""
        files = input_files(plan)
        saved_path = self.path / MANIFEST
        if plan.fresh:
            for p in list(self._ours()):
                p.unlink(missing_ok=True)
        if saved_path.exists():
            saved = Manifest.from_json(json.loads(saved_path.read_text("utf-8")), saved_path)
            what = _difference(saved, plan, files)
            if what:
                raise ConfigError(
                    f"{self.path} holds a batch run with another {what}; pass --fresh to start "
                    "over (deletes its answers) or choose another OUTDIR",
                    field="--output",
                )
            for tmp in [*self.path.glob(".*.tmp"), *(self.path / REJECTS).glob(".*.tmp")]:
                tmp.unlink()
            self.release_claims()
            return saved
        if any(self.path.glob("part-*.parquet")):
            raise ConfigError(
                f"{self.path} holds part files but no {MANIFEST}; choose another OUTDIR",
                field="--output",
            )
        manifest = make_manifest(plan, files)
        text = json.dumps(manifest.to_json(), indent=1)
        write_atomic(saved_path, lambda p: p.write_text(text, "utf-8"))
        return manifest

    def release_claims(self) -> None:
        """Forget who answers which partition (:func:`claim`): a run's claims die with it."""
        for p in self.path.glob(".part-*.claim"):
            p.unlink(missing_ok=True)

    def finished(self, manifest: Manifest) -> set[int]:
        return {p.index for p in manifest.partitions if self.part_path(p).exists()}

    def forget(self, parts: list[Partition]) -> None:
        """Delete what a killed run left of partitions to answer again (a reject file; the
        sample's files when it learns again)."""
        for p in parts:
            self.rejects_path(p).unlink(missing_ok=True)
            self.part_path(p).unlink(missing_ok=True)


def claim(outdir: str, index: int, session: str) -> bool:
    """Take partition ``index`` of the run writing ``outdir`` to answer it: True for the
    first to ask, False for everyone after (a file created exclusively in ``outdir``, named
    for the run's ``session``: another run's claim never counts).

    This process and Ray's workers share the partitions this way. A worker on a node that
    cannot see ``outdir`` takes every partition it asks for: a partition may then be
    answered twice, and the run writes the first answers it gets (they are the same).
    """
    path = os.path.join(outdir, f".part-{index:06d}.{session}.claim")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:
        pass  # ``outdir`` out of sight: take it (see above)
    return True


def _difference(saved: Manifest, plan: BatchPlan, files: list[InputFile]) -> str | None:
    """What differs between the saved run and this one (None: nothing)."""
    if saved.config_hash != plan.config.identity_hash():
        return "config (cascade, input fields or seed)"
    if saved.files != files:
        return "input (files added, removed or changed since)"
    if saved.partition_records != plan.partition_records:
        return f"--partition-records ({saved.partition_records})"
    if saved.learn_records != plan.learn_records:
        return f"--learn ({saved.learn_records})"
    return None


__all__ = [
    "LEARNED",
    "BatchPlan",
    "InputFile",
    "Manifest",
    "OutDir",
    "Partition",
    "choose_sample",
    "claim",
    "count_records",
    "cut",
    "find_duplicates",
    "input_files",
    "make_batch_plan",
    "make_manifest",
    "write_atomic",
]
