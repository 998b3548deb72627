"""Redis stream URLs: ``redis://[USER:PASSWORD@]HOST:PORT/STREAM?key=value&...``.

The path is the stream's key (not a database number, unlike a plain Redis URL: give
``db=N`` for that); ``rediss://`` connects with TLS. Every other setting is a query
parameter, and which ones a URL may carry depends on its role:

- input URLs: ``group`` (default ``tiered``): the consumer group, created with the stream
  if missing; ``consumer`` (default: the host name): this worker's name in the group;
  ``claim_idle`` (60): seconds an entry must sit unanswered with another consumer before
  this one takes it over (``XAUTOCLAIM``); ``deliveries`` (5): an entry handed out this
  many times without an answer goes to the dead-letter stream instead; ``dead`` (default
  ``STREAM:dead``): the dead-letter stream; ``block`` (1): seconds to wait for new
  entries before reporting an idle moment; ``start`` (``0``): where a new group starts,
  ``0`` the whole stream, ``$`` new entries only.
- output URLs: ``done`` (default ``STREAM:done``): the set of input ids already answered
  (exactly once); ``done_keep`` (604800, a week): seconds an answered id is remembered
  at least (0: for ever; :mod:`tiered.io.redis_streams`); ``share`` (``1``; ``0``: this
  worker learns alone, sharing no labels, counters or snapshots); ``snapshot_every``
  (30): seconds between saves of the learned state for workers that join later.
- both: ``db`` (0): the Redis database number.

>>> u = parse_stream_url("redis://localhost:6379/in?group=g&consumer=w1", role="input")
>>> (u.host, u.port, u.stream, u.params["group"])
('localhost', 6379, 'in', 'g')
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tiered.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import redis

SCHEMES = ("redis", "rediss")
Role = Literal["input", "output"]
_FLAG = {"input": "INPUT", "output": "--output"}
_COMMON = {"db": "0"}
_DEFAULTS: dict[Role, dict[str, str]] = {
    "input": {
        "group": "tiered",
        "consumer": "",  # the host name, filled in when parsed
        "claim_idle": "60",
        "deliveries": "5",
        "dead": "",  # STREAM:dead
        "block": "1",
        "start": "0",
        **_COMMON,
    },
    "output": {
        "done": "",
        "done_keep": "604800",
        "share": "1",
        "snapshot_every": "30",
        **_COMMON,
    },
}


def is_stream_url(text: str | object) -> bool:
    """Whether an INPUT or OUTPUT names a Redis stream rather than a file."""
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


@dataclass(frozen=True)
class StreamURL:
    """A parsed stream URL: where the server is, the stream's key, and the parameters
    of its role (every known one, defaults filled in)."""

    scheme: str
    host: str
    port: int
    stream: str
    role: Role
    params: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The URL without its password (safe for logs, summaries and run identities)."""
        user = f"{quote(self.username)}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}/{quote(self.stream, safe=':')}"

    def _bad(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{self}: parameter '{name}' {why}", field=_FLAG[self.role])

    def number(self, name: str, *, minimum: float = 0.0) -> float:
        """A parameter as a number of at least ``minimum``."""
        try:
            value = float(self.params[name])
        except ValueError:
            raise self._bad(name, f"must be a number; got {self.params[name]!r}") from None
        if not value >= minimum:
            raise self._bad(name, f"must be at least {minimum:g}; got {self.params[name]!r}")
        return value

    def integer(self, name: str, *, minimum: int = 0) -> int:
        """A parameter as a whole number of at least ``minimum``."""
        text = self.params[name]
        if not text.isdigit() or int(text) < minimum:
            raise self._bad(name, f"must be a whole number >= {minimum}; got {text!r}")
        return int(text)

    def client(self, *, decode: bool = True) -> redis.Redis:
        """A connected client; ``decode``: replies as ``str`` (fields, ids), else ``bytes``.

        A server that cannot be reached is a :class:`~tiered.errors.StoreError`.
        """
        return connect_redis(
            str(self),
            host=self.host,
            port=self.port,
            db=self.integer("db"),
            username=self.username,
            password=self.password,
            tls=self.scheme == "rediss",
            decode=decode,
            field=_FLAG[self.role],
        )


def connect_redis(
    shown: str,
    *,
    host: str,
    port: int,
    db: int,
    username: str | None,
    password: str | None,
    tls: bool,
    decode: bool,
    field: str,
) -> redis.Redis:
    """A client that answered ``PING``; ``shown`` names the server in errors (no password).

    Without redis-py it is a :class:`~tiered.errors.ConfigError` naming ``field``; a
    server that cannot be reached is a :class:`~tiered.errors.StoreError`.
    """
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "Redis needs the redis client: pip install 'tiered[redis]'", field=field
        ) from None
    client = redis.Redis(
        host=host,
        port=port,
        db=db,
        username=username,
        password=password,
        ssl=tls,
        decode_responses=decode,
        health_check_interval=30,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise StoreError(f"cannot reach Redis at {shown}: {exc}") from None
    return client


def parse_stream_url(text: str, *, role: Role) -> StreamURL:
    """Parse a stream URL for ``role``; an unknown or misplaced parameter, a missing
    stream name or a bad port is a :class:`~tiered.errors.ConfigError`."""
    flag = _FLAG[role]
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"{text!r} is not a redis:// or rediss:// URL", field=flag)
    stream = unquote(parts.path.lstrip("/"))
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{parts.netloc!r} has a bad port number", field=flag) from None
    shown = f"{scheme}://{parts.hostname or 'localhost'}:{port}/{stream}"
    if not stream:
        raise ConfigError(f"{shown} names no stream: write {scheme}://HOST:PORT/STREAM", field=flag)
    given = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    known = _DEFAULTS[role]
    unknown = sorted(set(given) - set(known))
    if unknown:
        other: Role = "output" if role == "input" else "input"
        elsewhere = [k for k in unknown if k in _DEFAULTS[other]]
        why = f" (it belongs on the {other} URL)" if elsewhere else ""
        raise ConfigError(
            f"{shown}: unknown parameter '{unknown[0]}'{why}; known: {', '.join(sorted(known))}",
            field=flag,
        )
    params = {**known, **given}
    if role == "input":
        params["consumer"] = params["consumer"] or socket.gethostname()
        params["dead"] = params["dead"] or f"{stream}:dead"
        if params["start"] not in ("0", "$"):
            raise ConfigError(f"{shown}: parameter 'start' must be 0 or $", field=flag)
    else:
        params["done"] = params["done"] or f"{stream}:done"
        if params["share"] not in ("0", "1"):
            raise ConfigError(f"{shown}: parameter 'share' must be 0 or 1", field=flag)
    url = StreamURL(
        scheme=scheme,
        host=parts.hostname or "localhost",
        port=port,
        stream=stream,
        role=role,
        params=params,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
    for name in ("claim_idle", "block", "snapshot_every", "done_keep"):
        if name in params:
            url.number(name)
    for name in ("deliveries", "db"):
        if name in params:
            url.integer(name, minimum=1 if name == "deliveries" else 0)
    return url


__all__ = ["SCHEMES", "Role", "StreamURL", "connect_redis", "is_stream_url", "parse_stream_url"]
