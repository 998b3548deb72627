"""Schema versions of the tables each component keeps in a state store.

Table ``store_schema`` records, per component (``learner_state``, ``gateway_spend``,
``response_cache``), the version of the tables it wrote. Opening a component's tables
(:func:`ensure_schema`) creates them in a new store, migrates those of an older version
step by step, and refuses a store written by a newer tiered. A store written before
versions were recorded is version 0 when the component's old table is there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence

from tiered.errors import StoreError

Migration = Callable[[sqlite3.Connection], None]

_TABLE = """
CREATE TABLE IF NOT EXISTS store_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)
"""


def unchanged(conn: sqlite3.Connection) -> None:
    """A migration for tables that stay as they were: from now on their version is recorded."""


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def ensure_schema(
    conn: sqlite3.Connection,
    component: str,
    version: int,
    create: Sequence[str],
    *,
    legacy_table: str | None = None,
    migrations: Mapping[int, Migration] | None = None,
) -> None:
    """Bring ``component``'s tables to ``version`` in one transaction.

    ``create`` are the statements making the current tables (``IF NOT EXISTS``; one
    statement each: ``executescript`` would commit the transaction half-way).
    ``legacy_table`` is a table whose presence, with no recorded version, means version 0.
    ``migrations[v]`` takes the tables from version ``v`` to ``v + 1``; it may refuse by
    raising :class:`StoreError`.
    A version with no migration path, or newer than ``version``, is refused.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_TABLE)
            row = conn.execute(
                "SELECT version FROM store_schema WHERE component = ?", (component,)
            ).fetchone()
            found = int(row[0]) if row is not None else None
            if found is None and legacy_table is not None and has_table(conn, legacy_table):
                found = 0
            if found is not None and found > version:
                raise StoreError(
                    f"the state store's {component} tables were written by a newer tiered "
                    f"(schema {found}; this one reads up to {version}); upgrade tiered or "
                    "use another store"
                )
            if found is not None:
                for v in range(found, version):
                    step = (migrations or {}).get(v)
                    if step is None:
                        raise StoreError(
                            f"the state store's {component} tables have schema {v}, which this "
                            f"tiered cannot migrate to {version}; use another store"
                        )
                    step(conn)
            for statement in create:
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO store_schema (component, version) VALUES (?, ?)",
                (component, version),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot set up the {component} tables of the state store: {exc}") from exc


__all__ = ["Migration", "ensure_schema", "has_table", "unchanged"]
