"""Learned state of the gateway's online cascades, one row per cascade, in a state store.

The state is saved as arrays + JSON (:mod:`tiered.store.state`), never as a pickle, so
opening a store cannot run code. Schema history (component ``learner_state``):

- 0: table ``gateway_online`` holding zlib-compressed pickles. Not loaded: an empty table
  is dropped, one with rows is refused (its state would have to be unpickled).
- 1: table ``learner_state``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from tiered.errors import StoreError
from tiered.store.schema import ensure_schema
from tiered.store.state import decode_state

SCHEMA_VERSION = 1

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS learner_state (
        name TEXT PRIMARY KEY,
        config_hash TEXT NOT NULL,
        n_items INTEGER NOT NULL,
        state BLOB NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
)


def _from_pickles(conn: sqlite3.Connection) -> None:
    """0 -> 1: the pickled rows cannot be read safely; only an empty table moves on."""
    (rows,) = conn.execute("SELECT COUNT(*) FROM gateway_online").fetchone()
    if rows:
        raise StoreError(
            f"the state store holds online learned state of {rows} cascade(s) saved by an "
            "older tiered as pickles (table gateway_online); tiered no longer loads pickles, "
            "because loading one can run code. Point server.store at a new file, or drop "
            "that table to let the online cascades learn afresh"
        )
    conn.execute("DROP TABLE gateway_online")


@dataclass(frozen=True, slots=True)
class SavedLearner:
    """A cascade's saved state and what it was learned with."""

    config_hash: str
    n_items: int
    state: Any
    updated_at: float


class LearnerStates:
    """The ``learner_state`` table of a state store (one connection, used by one thread)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(
            conn,
            "learner_state",
            SCHEMA_VERSION,
            _CREATE,
            legacy_table="gateway_online",
            migrations={0: _from_pickles},
        )

    def load(self, name: str) -> SavedLearner | None:
        """The state saved for cascade ``name`` (None if there is none)."""
        try:
            row = self.conn.execute(
                "SELECT config_hash, n_items, state, updated_at FROM learner_state WHERE name = ?",
                (name,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the learned state of '{name}': {exc}") from exc
        if row is None:
            return None
        config_hash, n_items, blob, updated = row
        state = decode_state(blob, what=f"the learned state of '{name}' in the state store")
        return SavedLearner(str(config_hash), int(n_items), state, float(updated))

    def save(self, name: str, *, config_hash: str, n_items: int, blob: bytes) -> None:
        """Write cascade ``name``'s state: ``blob`` is
        :func:`~tiered.store.state.encode_state` of it (encode large learners off the
        event loop)."""
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO learner_state "
                "(name, config_hash, n_items, state, updated_at) VALUES (?, ?, ?, ?, ?)",
                (name, config_hash, n_items, blob, time.time()),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save the learned state of '{name}': {exc}") from exc


__all__ = ["SCHEMA_VERSION", "LearnerStates", "SavedLearner"]
