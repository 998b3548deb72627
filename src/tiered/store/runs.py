"""Checkpoints of ``tiered run`` in the SQLite state store.

One store file holds one run (tables prefixed ``run_``; other components, such as the
response cache, add their own tables to the same file). A checkpoint is written in ONE
transaction: the position of the source and of every sink (opaque JSON tokens: a record
offset and byte lengths for files, a stream id for a stream), the run's counters, the
learner state (arrays + JSON) and the history rows since the last checkpoint. Either all of it is
committed or none, so after SIGKILL the store always describes a consistent point of the
run.

The run's identity (a hash of its config, its input and output paths) is stored when the
run starts; resuming with a different identity is refused with a :class:`StoreError`
that suggests ``--fresh``; so is a store written with an older schema.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tiered.errors import StoreError
from tiered.store.sqlite import connect
from tiered.store.state import decode_state, encode_state

# 2: positions as one JSON map of opaque tokens (1 had integer offset/byte-length columns)
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    positions TEXT NOT NULL,
    counters TEXT NOT NULL,
    learner BLOB,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS run_history (
    n INTEGER PRIMARY KEY,
    row TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What makes two invocations the same run."""

    config_hash: str
    input: str
    output: str

    def describe_difference(self, other: RunIdentity) -> str:
        diffs = []
        if self.config_hash != other.config_hash:
            diffs.append(
                f"config {other.config_hash[:12]} (saved) vs {self.config_hash[:12]} (now)"
            )
        if self.input != other.input:
            diffs.append(f"input {other.input} (saved) vs {self.input} (now)")
        if self.output != other.output:
            diffs.append(f"output {other.output} (saved) vs {self.output} (now)")
        return "; ".join(diffs)


@dataclass(slots=True)
class Checkpoint:
    """A consistent point of a run: where the stream is, what is durable, what was learned.

    ``positions`` maps a role (``source``, ``output``, ``rejects``, ``replay``) to that
    endpoint's position token: any JSON value, meaningful only to the endpoint itself.
    """

    positions: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    learner: Any = None  # the learner's state_dict (arrays + JSON in the store)
    seq: int = 0
    created_at: float = 0.0


class RunStore:
    """The run tables of a state store file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[bytes] | None = None
        self.conn = connect(self.path)
        try:
            self.conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot set up the run tables in {self.path}: {exc}") from exc

    # -- identity -------------------------------------------------------------------------

    def _meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM run_meta").fetchall())

    def identity(self) -> RunIdentity | None:
        """The identity of the run this store holds, if any."""
        meta = self._meta()
        if "config_hash" not in meta:
            return None
        return RunIdentity(meta["config_hash"], meta.get("input", ""), meta.get("output", ""))

    def schema_version(self) -> int | None:
        """The schema the saved run was written with (None when the store holds no run)."""
        meta = self._meta()
        if "config_hash" not in meta:
            return None
        try:
            return int(meta.get("schema_version", "0"))
        except ValueError:
            return 0

    def _check_schema(self) -> None:
        version = self.schema_version()
        if version is not None and version != SCHEMA_VERSION:
            raise StoreError(
                f"the state store {self.path} was written by another tiered version "
                f"(schema {version}, this one reads {SCHEMA_VERSION}); pass --fresh to "
                "discard its saved state and start over, or use another --store"
            )

    def saved_run(self, identity: RunIdentity, *, fresh: bool = False) -> Checkpoint | None:
        """The last checkpoint of the run to resume, or None when a new run must begin.

        A saved run without a checkpoint yet resumes from an empty :class:`Checkpoint`.
        Raises :class:`StoreError` when the store holds a *different* run or one written
        with another schema, unless ``fresh`` (then the caller will :meth:`begin` anew).
        """
        if fresh:
            return None
        saved = self.identity()
        if saved is None:
            return None
        self._check_schema()
        if saved != identity:
            raise StoreError(
                f"the state store {self.path} holds a different run "
                f"({identity.describe_difference(saved)}); pass --fresh to discard its "
                "saved state and start over, or use another --store"
            )
        return self.latest() or Checkpoint()

    def begin(self, identity: RunIdentity, *, config: dict[str, Any] | None = None) -> None:
        """Discard whatever the store holds and record a new run (an old schema's tables too)."""
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "config_hash": identity.config_hash,
            "input": identity.input,
            "output": identity.output,
            "config": json.dumps(config or {}, sort_keys=True, default=str),
            "created_at": repr(time.time()),
        }
        try:
            with self._transaction():
                for table in ("run_meta", "run_checkpoint", "run_history"):
                    self.conn.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.executemany("INSERT INTO run_meta VALUES (?, ?)", meta.items())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a run in {self.path}: {exc}") from exc

    def start(
        self, identity: RunIdentity, *, fresh: bool = False, config: dict[str, Any] | None = None
    ) -> Checkpoint | None:
        """Resume the saved run (return its last checkpoint) or :meth:`begin` one (None)."""
        saved = self.saved_run(identity, fresh=fresh)
        if saved is None:
            self.begin(identity, config=config)
        return saved

    # -- checkpoints ----------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def commit(self, cp: Checkpoint, history: Sequence[dict[str, Any]] = ()) -> Checkpoint:
        """Write ``cp`` and the new history rows in one transaction; return it numbered."""
        cp.seq += 1
        cp.created_at = time.time()
        blob = None
        if cp.learner is not None:
            # arrays + JSON, never a pickle: loading a store must not run code. Not
            # compressed: learned float weights barely shrink (5 MB -> 3.5 MB for a hashed
            # n-gram stage) and zlib took longer than the whole commit
            blob = encode_state(cp.learner)
        rows = [(int(r["n"]), json.dumps(r, default=float)) for r in history]
        try:
            with self._transaction():
                self.conn.execute(
                    "INSERT OR REPLACE INTO run_checkpoint VALUES (1, ?, ?, ?, ?, ?)",
                    (
                        cp.seq,
                        json.dumps(cp.positions, sort_keys=True),
                        json.dumps(cp.counters, default=float),
                        blob,
                        cp.created_at,
                    ),
                )
                self.conn.executemany("INSERT OR REPLACE INTO run_history VALUES (?, ?)", rows)
        except sqlite3.Error as exc:
            cp.seq -= 1
            raise StoreError(f"cannot write a checkpoint to {self.path}: {exc}") from exc
        return cp

    def latest(self, *, with_learner: bool = True) -> Checkpoint | None:
        """The last committed checkpoint (None before the first one)."""
        self._check_schema()
        row = self.conn.execute(
            "SELECT seq, positions, counters, "
            f"{'learner' if with_learner else 'NULL'}, created_at FROM run_checkpoint WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        seq, positions, counters, blob, created = row
        learner = None
        if blob is not None:
            try:
                learner = decode_state(blob, what="the learned state")
            except StoreError as exc:
                raise StoreError(
                    f"cannot load the learned state saved in {self.path} ({exc}); it may come "
                    "from another tiered version: pass --fresh to start over"
                ) from exc
        return Checkpoint(
            positions=json.loads(positions),
            counters=json.loads(counters),
            learner=learner,
            seq=seq,
            created_at=created,
        )

    def history(self) -> list[dict[str, Any]]:
        """Every committed history row, in stream order."""
        return [
            json.loads(r) for (r,) in self.conn.execute("SELECT row FROM run_history ORDER BY n")
        ]

    def config(self) -> dict[str, Any]:
        """The config the run was started with (as saved)."""
        return dict(json.loads(self._meta().get("config", "{}")))

    def lock(self) -> None:
        """Claim the store for this process: two runs writing one output would corrupt it.

        An advisory ``flock`` on the store file (independent of SQLite's own locks); it
        goes away with the process, however the process ends.
        """
        if self._lock is not None or str(self.path) == ":memory:":
            return
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unguarded
            return
        handle = open(self.path, "rb")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(
                f"another tiered run is using the state store {self.path}; wait for it to end "
                "(two runs on one store would write the same output twice)"
            ) from None
        self._lock = handle

    def close(self) -> None:
        self.conn.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


__all__ = ["SCHEMA_VERSION", "Checkpoint", "RunIdentity", "RunStore"]
