"""What each API key of the gateway has spent, in a state store (so restarts keep budgets).

Schema history (component ``gateway_spend``):

- 0: table ``gateway_spend`` without a recorded version (same columns as 1).
- 1: table ``gateway_spend`` (key, spent_usd, updated_at), version recorded.
"""

from __future__ import annotations

import sqlite3
import time

from tiered.errors import StoreError
from tiered.store.schema import ensure_schema, unchanged

SCHEMA_VERSION = 1

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS gateway_spend (
        key TEXT PRIMARY KEY,
        spent_usd REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
)


class SpendTable:
    """Settled USD per key name (the ``gateway_spend`` table)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(
            conn,
            "gateway_spend",
            SCHEMA_VERSION,
            _CREATE,
            legacy_table="gateway_spend",
            migrations={0: unchanged},
        )

    def totals(self) -> dict[str, float]:
        """Spend so far per key."""
        try:
            rows = self.conn.execute("SELECT key, spent_usd FROM gateway_spend").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read gateway spend from the store: {exc}") from exc
        return {str(k): float(v) for k, v in rows}

    def add(self, key: str, usd: float) -> None:
        """Add ``usd`` to ``key``'s spend (committed at once)."""
        try:
            self.conn.execute(
                "INSERT INTO gateway_spend (key, spent_usd, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd, "
                "updated_at = excluded.updated_at",
                (key, usd, time.time()),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record gateway spend in the store: {exc}") from exc


__all__ = ["SCHEMA_VERSION", "SpendTable"]
