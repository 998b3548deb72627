"""Checkpoints of ``tiered run`` in the SQLite state store.

One store file holds one run (tables prefixed ``run_``; other components, such as the
response cache, add their own tables to the same file). A checkpoint is written in ONE
transaction: the stream offset, the committed byte length of every output file, the
run's counters, the pickled learner state and the history rows since the last
checkpoint. Either all of it is committed or none, so after SIGKILL the store always
describes a consistent point of the run.

The run's identity (a hash of its config, its input and output paths) is stored when the
run starts; resuming with a different identity is refused with a :class:`StoreError`
that suggests ``--fresh``.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tiered.errors import StoreError
from tiered.store.sqlite import connect

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    stream_offset INTEGER NOT NULL,
    output_bytes INTEGER NOT NULL,
    reject_bytes INTEGER NOT NULL,
    replay_bytes INTEGER NOT NULL,
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
    """A consistent point of a run: where the stream is, what is durable, what was learned."""

    offset: int = 0
    output_bytes: int = 0
    reject_bytes: int = 0
    replay_bytes: int = 0
    counters: dict[str, Any] = field(default_factory=dict)
    learner: Any = None  # the learner's state_dict (pickled in the store)
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

    def start(
        self, identity: RunIdentity, *, fresh: bool = False, config: dict[str, Any] | None = None
    ) -> Checkpoint | None:
        """Begin a run, or resume it: return its last checkpoint (None when starting).

        Raises :class:`StoreError` when the store holds a *different* run and ``fresh``
        is false; with ``fresh`` the saved run is discarded.
        """
        saved = self.identity()
        if saved is not None and not fresh:
            if saved != identity:
                raise StoreError(
                    f"the state store {self.path} holds a different run "
                    f"({identity.describe_difference(saved)}); pass --fresh to discard its "
                    "saved state and start over, or use another --store"
                )
            meta = self._meta()
            if int(meta.get("schema_version", "0")) != SCHEMA_VERSION:
                raise StoreError(
                    f"the state store {self.path} was written by another tiered version "
                    f"(schema {meta.get('schema_version')}, this one reads {SCHEMA_VERSION}); "
                    "pass --fresh to start over"
                )
            return self.latest()
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
                self.conn.execute("DELETE FROM run_meta")
                self.conn.execute("DELETE FROM run_checkpoint")
                self.conn.execute("DELETE FROM run_history")
                self.conn.executemany("INSERT INTO run_meta VALUES (?, ?)", meta.items())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a run in {self.path}: {exc}") from exc
        return None

    # -- checkpoints ----------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def commit(self, cp: Checkpoint, history: Sequence[dict[str, Any]] = ()) -> Checkpoint:
        """Write ``cp`` and the new history rows in one transaction; return it numbered."""
        cp.seq += 1
        cp.created_at = time.time()
        blob = None
        if cp.learner is not None:
            # not compressed: learned float weights barely shrink (5 MB -> 3.5 MB for a
            # hashed n-gram stage) and zlib took longer than the whole commit
            blob = pickle.dumps(cp.learner, protocol=pickle.HIGHEST_PROTOCOL)
        rows = [(int(r["n"]), json.dumps(r, default=float)) for r in history]
        try:
            with self._transaction():
                self.conn.execute(
                    "INSERT OR REPLACE INTO run_checkpoint VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cp.seq,
                        cp.offset,
                        cp.output_bytes,
                        cp.reject_bytes,
                        cp.replay_bytes,
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
        row = self.conn.execute(
            "SELECT seq, stream_offset, output_bytes, reject_bytes, replay_bytes, counters, "
            f"{'learner' if with_learner else 'NULL'}, created_at FROM run_checkpoint WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        seq, offset, out_b, rej_b, rep_b, counters, blob, created = row
        learner = None
        if blob is not None:
            try:
                learner = pickle.loads(blob)
            except Exception as exc:  # any unpickling failure means the state is unusable
                raise StoreError(
                    f"cannot load the learned state saved in {self.path} ({type(exc).__name__}: "
                    f"{exc}); it may come from another tiered version: pass --fresh to start over"
                ) from exc
        return Checkpoint(
            offset=offset,
            output_bytes=out_b,
            reject_bytes=rej_b,
            replay_bytes=rep_b,
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
