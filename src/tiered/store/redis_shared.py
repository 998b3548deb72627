"""The Redis that gateway replicas share: ``redis://[USER:PASSWORD@]HOST:PORT/DB?...``.

Unlike a stream URL (:mod:`tiered.io.redis_url`), the path is the database number
(default 0), as in any Redis URL; ``rediss://`` connects with TLS. Query parameters:

- ``prefix`` (``tiered``): every key the replicas write starts with ``PREFIX:`` (two
  services on one Redis use two prefixes);
- ``cache_ttl`` (86400): seconds a shared cached response is kept;
- ``cache_max_bytes`` (1048576): a response larger than this is not cached;
- ``snapshot_every`` (30): seconds between snapshots of an online cascade's learned state.

>>> u = parse_shared_url("redis://cache.internal:6380/2?prefix=bot")
>>> (u.host, u.port, u.db, u.prefix, str(u))
('cache.internal', 6380, 2, 'bot', 'redis://cache.internal:6380/2')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tiered.errors import ConfigError
from tiered.io.redis_url import SCHEMES, connect_redis

if TYPE_CHECKING:
    import redis

FIELD = "server.shared"
_DEFAULTS = {
    "prefix": "tiered",
    "cache_ttl": "86400",
    "cache_max_bytes": "1048576",
    "snapshot_every": "30",
}
_FORM = "redis://HOST:PORT/DB (or rediss:// for TLS)"


@dataclass(frozen=True)
class SharedURL:
    """A parsed shared-state URL (see the module docstring)."""

    scheme: str
    host: str
    port: int
    db: int
    prefix: str
    cache_ttl_s: int
    cache_max_bytes: int
    snapshot_every_s: float
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        """The URL without its password or parameters (safe for logs)."""
        user = f"{quote(self.username)}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}/{self.db}"

    def __repr__(self) -> str:
        return f"SharedURL({self})"

    def key(self, *parts: str) -> str:
        """A key of this service: ``PREFIX:part:part``."""
        return ":".join((self.prefix, *parts))

    def client(self, *, decode: bool = True) -> redis.Redis:
        """A connected client (``decode``: ``str`` replies, else ``bytes``); an unreachable
        server is a :class:`~tiered.errors.StoreError`."""
        return connect_redis(
            str(self),
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            tls=self.scheme == "rediss",
            decode=decode,
            field=FIELD,
        )


def _whole(params: dict[str, str], name: str, minimum: int, shown: str) -> int:
    text = params[name]
    if not text.isdigit() or int(text) < minimum:
        raise ConfigError(
            f"{shown}: parameter '{name}' must be a whole number >= {minimum}; got {text!r}",
            field=FIELD,
        )
    return int(text)


def parse_shared_url(text: str) -> SharedURL:
    """Parse ``server.shared``; anything off (scheme, port, database, an unknown
    parameter) is a :class:`~tiered.errors.ConfigError` naming the field and the form."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.netloc:
        raise ConfigError(f"{text!r} is not a Redis URL: write {_FORM}", field=FIELD)
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(
            f"{parts.hostname or parts.netloc!r} has a bad port number: write {_FORM}", field=FIELD
        ) from None
    host = parts.hostname or "localhost"
    shown = f"{scheme}://{host}:{port}{parts.path}"
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(
            f"{shown}: the path is the database number, not {db!r}: write {_FORM}", field=FIELD
        )
    given = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(given) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{shown}: unknown parameter '{unknown[0]}'; known: {', '.join(sorted(_DEFAULTS))}",
            field=FIELD,
        )
    params = {**_DEFAULTS, **given}
    if not params["prefix"] or any(c.isspace() for c in params["prefix"]):
        raise ConfigError(f"{shown}: parameter 'prefix' must be a word", field=FIELD)
    try:
        every = float(params["snapshot_every"])
    except ValueError:
        every = -1.0
    if not every > 0:
        raise ConfigError(
            f"{shown}: parameter 'snapshot_every' must be a number of seconds > 0; "
            f"got {params['snapshot_every']!r}",
            field=FIELD,
        )
    return SharedURL(
        scheme=scheme,
        host=host,
        port=port,
        db=int(db),
        prefix=params["prefix"],
        cache_ttl_s=_whole(params, "cache_ttl", 1, shown),
        cache_max_bytes=_whole(params, "cache_max_bytes", 1, shown),
        snapshot_every_s=every,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


__all__ = ["FIELD", "SharedURL", "parse_shared_url"]
