"""The LLM response cache: the same request is never paid for twice, across runs.

A request is keyed by a SHA-256 of its canonical JSON: endpoint base URL, endpoint kind,
model, messages or prompt, and every sampling parameter. The API key is never part of a
request's key or of anything stored: the table holds what was asked and answered, and
what it cost when it was paid for (tokens, USD, latency), so a cache hit can report the
recorded numbers while costing nothing.

The table (``llm_cache``) lives in the same SQLite state store as a run's checkpoints
(:func:`tiered.store.sqlite.connect`, WAL); other components own other tables there.
Gateway replicas share one cache in Redis instead
(:class:`tiered.store.redis_cache.RedisResponseCache`): both are a :class:`ResponseStore`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tiered.errors import StoreError
from tiered.store.fingerprint import json_fingerprint
from tiered.store.schema import ensure_schema, unchanged
from tiered.store.sqlite import connect

# Schema history (component "response_cache"): 0, table llm_cache without a recorded
# version; 1, the same table, version recorded.
SCHEMA_VERSION = 1

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS llm_cache (
        key TEXT PRIMARY KEY,
        base_url TEXT NOT NULL,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        response TEXT NOT NULL,
        tokens_in INTEGER,
        tokens_out INTEGER,
        usd REAL NOT NULL,
        latency_ms REAL NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)


def request_key(base_url: str, request: dict[str, Any]) -> str:
    """The cache key of ``request`` (model, messages/prompt, parameters) sent to ``base_url``."""
    return json_fingerprint(
        {"base_url": base_url.rstrip("/"), "request": request}, ensure_ascii=False
    )


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response and what it cost when it was paid for."""

    response: dict[str, Any]
    tokens_in: int | None
    tokens_out: int | None
    usd: float
    latency_ms: float


@runtime_checkable
class ResponseStore(Protocol):
    """Where a model keeps responses already paid for (see the module docstring)."""

    path: str | None  # the SQLite file, if the cache is one (a pickled model reopens it)
    hits: int
    misses: int

    def get(self, key: str) -> CachedResponse | None:
        """The response stored under ``key`` (None: not there)."""
        ...

    def put(
        self,
        key: str,
        *,
        base_url: str,
        request: dict[str, Any],
        response: dict[str, Any],
        tokens_in: int | None,
        tokens_out: int | None,
        usd: float,
        latency_ms: float,
    ) -> None:
        """Store ``response`` to ``request`` and what it cost under ``key``."""
        ...

    def close(self) -> None: ...


class ResponseCache:
    """Stored LLM responses in the ``llm_cache`` table of a SQLite store.

    Thread-safe: one connection guarded by a lock (the model's event loop thread and the
    caller's thread may both use it). Every ``put`` commits at once (autocommit, WAL), so a
    response that was paid for survives a crash right after it.
    """

    def __init__(self, store: str | Path | sqlite3.Connection) -> None:
        if isinstance(store, sqlite3.Connection):
            self._conn = store
            self._owns = False
            self.path: str | None = None
        else:
            self._conn = connect(store)
            self._owns = True
            self.path = str(store)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        with self._lock:
            ensure_schema(
                self._conn,
                "response_cache",
                SCHEMA_VERSION,
                _CREATE,
                legacy_table="llm_cache",
                migrations={0: unchanged},
            )

    def __repr__(self) -> str:
        return f"ResponseCache(path={self.path!r}, hits={self.hits}, misses={self.misses})"

    def get(self, key: str) -> CachedResponse | None:
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT response, tokens_in, tokens_out, usd, latency_ms "
                    "FROM llm_cache WHERE key = ?",
                    (key,),
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"response cache lookup failed: {exc}") from exc
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return CachedResponse(json.loads(row[0]), row[1], row[2], float(row[3]), float(row[4]))

    def put(
        self,
        key: str,
        *,
        base_url: str,
        request: dict[str, Any],
        response: dict[str, Any],
        tokens_in: int | None,
        tokens_out: int | None,
        usd: float,
        latency_ms: float,
    ) -> None:
        row = (
            key,
            base_url.rstrip("/"),
            str(request.get("model", "")),
            json.dumps(request, sort_keys=True, ensure_ascii=False),
            json.dumps(response, ensure_ascii=False),
            tokens_in,
            tokens_out,
            usd,
            latency_ms,
            time.time(),
        )
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT OR REPLACE INTO llm_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row
                )
        except sqlite3.Error as exc:
            raise StoreError(f"response cache write failed: {exc}") from exc

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0])

    def totals(self) -> dict[str, float]:
        """What the stored responses cost when paid for: calls, tokens, USD, latency."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), "
                "COALESCE(SUM(usd), 0), COALESCE(SUM(latency_ms), 0) FROM llm_cache"
            ).fetchone()
        keys = ("calls", "tokens_in", "tokens_out", "usd", "latency_ms")
        return {k: float(v) for k, v in zip(keys, row, strict=True)}

    def close(self) -> None:
        if self._owns:
            with self._lock:
                self._conn.close()


__all__ = ["CachedResponse", "ResponseCache", "ResponseStore", "request_key"]
