"""The LLM response cache in Redis: what one gateway replica paid for, every replica reuses.

The same :class:`~tiered.store.response_cache.ResponseStore` as the SQLite cache, keyed
the same way (:func:`~tiered.store.response_cache.request_key`): the value under
``PREFIX:cache:KEY`` is the response and what it cost when it was paid for, as JSON. Each
entry expires ``ttl_s`` seconds after it was written (Redis's memory is not a disk); a
response whose entry would be larger than ``max_bytes`` is not cached. As with the SQLite
cache, the API key is never part of a key or of what is stored.

A cache must not take the service down: when Redis fails, a lookup is a miss and a
write is skipped, with a warning in the log (at most one a minute).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from tiered.store.response_cache import CachedResponse

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
_WARN_EVERY_S = 60.0


class RedisResponseCache:
    """Stored LLM responses in Redis (see the module docstring); thread-safe, as the
    client is. ``client`` must decode replies (``decode_responses=True``)."""

    path: str | None = None  # not a file: a pickled model that had it gets no cache

    def __init__(
        self, client: redis.Redis, prefix: str, *, ttl_s: int = 86400, max_bytes: int = 1 << 20
    ) -> None:
        if ttl_s < 1 or max_bytes < 1:
            raise ValueError("ttl_s and max_bytes must be >= 1")
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.too_large = 0  # responses not cached for their size
        self.errors = 0  # Redis failures (each a miss or a skipped write)
        self._warned_at = -_WARN_EVERY_S

    def __repr__(self) -> str:
        return f"RedisResponseCache(prefix={self.prefix!r}, hits={self.hits}, misses={self.misses})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("shared response cache: %s failed (%s); going on without it", what, exc)

    def get(self, key: str) -> CachedResponse | None:
        import redis

        try:
            raw = self.client.get(self._key(key))
        except redis.RedisError as exc:
            self._failed("a lookup", exc)
            raw = None
        hit = _decode(raw) if raw is not None else None
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        return hit

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
        import redis

        value = json.dumps(
            {
                "response": response,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "usd": usd,
                "latency_ms": latency_ms,
            },
            ensure_ascii=False,
        ).encode()
        if len(value) > self.max_bytes:
            self.too_large += 1
            return
        try:
            self.client.set(self._key(key), value, ex=self.ttl_s)
        except redis.RedisError as exc:
            self._failed("a write", exc)

    def close(self) -> None:
        """Nothing to do: the client belongs to whoever made it."""


def _decode(raw: str | bytes) -> CachedResponse | None:
    """A stored entry, or None when it is not one (written by something else: a miss)."""
    try:
        d = json.loads(raw)
        return CachedResponse(
            dict(d["response"]),
            None if d["tokens_in"] is None else int(d["tokens_in"]),
            None if d["tokens_out"] is None else int(d["tokens_out"]),
            float(d["usd"]),
            float(d["latency_ms"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


__all__ = ["RedisResponseCache"]
