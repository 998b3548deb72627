"""Opening the SQLite state store.

WAL lets readers (a report, the gateway's metrics) run while one writer commits, and a
commit survives SIGKILL of the writer. ``synchronous=NORMAL`` is safe in WAL mode against
process crashes (only an OS crash may lose the last transactions), and much faster.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tiered.errors import StoreError


def connect(path: str | Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path`` with WAL and a busy timeout."""
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(
            str(p), timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state store {p}: {exc}") from exc
    return conn
