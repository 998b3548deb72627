"""Per-account spend and reservations in Redis: one budget for every gateway replica.

A :class:`~tiered.store.ledger.Ledger` whose reserve and settle steps are Lua scripts,
so that across any number of processes "reserve only if spent + reserved + amount stays
within the cap" is one atomic step, and settling moves a reservation to spent in one
step too. Keys (``P`` is the service's prefix, ``A`` an account):

- ``P:budget:spent`` (hash A -> USD settled) and ``P:budget:held`` (hash A -> USD in
  open reservations);
- ``P:budget:holds:A`` (hash token -> USD) and ``P:budget:expiry:A`` (sorted set token
  -> expiry time in ms, Redis's clock): each open reservation.

A reservation expires ``hold_ttl_s`` after it was made (longer than any request may
run): a replica that dies mid-request leaves a reservation that the next reservation
of the account drops, so the account's budget is not held forever. Amounts travel as
decimal text and are added with ``HINCRBYFLOAT``, so no float is rounded on the way.
Settled spend is kept as long as Redis keeps it: give Redis an append-only file.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from tiered.errors import StoreError
from tiered.store.ledger import Hold

if TYPE_CHECKING:
    import redis

# KEYS: spent hash, held hash, the account's holds hash, the account's expiry zset.
# ARGV: account, usd (text), limit ('' = none), token ('' = only drop expired and read),
#       ttl in ms.
# Returns {granted (0/1), spent (text), held (text)}; spent/held as before this hold.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local acct = ARGV[1]
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, tok in ipairs(expired) do
  local amt = redis.call('HGET', KEYS[3], tok)
  if amt then
    redis.call('HDEL', KEYS[3], tok)
    redis.call('HINCRBYFLOAT', KEYS[2], acct, '-' .. amt)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) end
-- no open reservation: no float dust left in the total either
if redis.call('HLEN', KEYS[3]) == 0 then redis.call('HDEL', KEYS[2], acct) end
local spent = redis.call('HGET', KEYS[1], acct) or '0'
local held = redis.call('HGET', KEYS[2], acct) or '0'
if ARGV[4] == '' then return {0, spent, held} end
if ARGV[3] ~= '' then
  local s, h, usd, limit = tonumber(spent), tonumber(held), tonumber(ARGV[2]), tonumber(ARGV[3])
  if s + h + usd > limit or s + h >= limit then return {0, spent, held} end
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[4])
redis.call('HINCRBYFLOAT', KEYS[2], acct, ARGV[2])
return {1, spent, held}
"""

# KEYS: as above. ARGV: account, token, charge (text).
# Returns 1 when the reservation was still held, else 0 (expired: the charge still counts).
_SETTLE = """
local acct = ARGV[1]
local amt = redis.call('HGET', KEYS[3], ARGV[2])
if amt then
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  if redis.call('HLEN', KEYS[3]) == 0 then
    redis.call('HDEL', KEYS[2], acct)
  else
    redis.call('HINCRBYFLOAT', KEYS[2], acct, '-' .. amt)
  end
end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBYFLOAT', KEYS[1], acct, ARGV[3]) end
if amt then return 1 end
return 0
"""


def _text(usd: float) -> str:
    # repr: the shortest text that reads back as the same float (HINCRBYFLOAT takes
    # exponents); never negative here
    return repr(float(usd))


class RedisLedger:
    """A :class:`~tiered.store.ledger.Ledger` in Redis (see the module docstring).

    ``client`` must decode replies (``decode_responses=True``); ``prefix`` starts every
    key; ``hold_ttl_s``: how long a reservation lives without being settled.
    """

    def __init__(self, client: redis.Redis, prefix: str, *, hold_ttl_s: float) -> None:
        if not hold_ttl_s > 0:
            raise ValueError(f"hold_ttl_s must be > 0, not {hold_ttl_s!r}")
        self.client = client
        self.prefix = prefix
        self.hold_ttl_ms = int(hold_ttl_s * 1000)
        self._spent_key = f"{prefix}:budget:spent"
        self._held_key = f"{prefix}:budget:held"
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def __repr__(self) -> str:
        return f"RedisLedger(prefix={self.prefix!r})"

    def _keys(self, account: str) -> list[str]:
        return [
            self._spent_key,
            self._held_key,
            f"{self.prefix}:budget:holds:{account}",
            f"{self.prefix}:budget:expiry:{account}",
        ]

    def _run(self, what: str, fn: Any, **kw: Any) -> Any:
        import redis

        try:
            return fn(**kw)
        except redis.RedisError as exc:
            raise StoreError(f"the shared budget in Redis: {what} failed: {exc}") from exc

    def reserve(self, account: str, usd: float, limit: float | None) -> Hold:
        token = uuid.uuid4().hex
        args = [account, _text(usd), "" if limit is None else _text(limit), token, self.hold_ttl_ms]
        granted, spent, held = self._run(
            "reserving", self._reserve, keys=self._keys(account), args=args
        )
        ok = int(granted) == 1
        return Hold(ok, token if ok else "", float(spent), float(held))

    def settle(self, account: str, token: str, usd: float, charge: float) -> bool:
        args = [account, token, _text(max(charge, 0.0))]
        found = self._run("settling", self._settle, keys=self._keys(account), args=args)
        return int(found) == 1

    def _read(self, account: str) -> tuple[float, float]:
        """Spend and open reservations of ``account``, expired ones dropped first."""
        args = [account, "0", "", "", self.hold_ttl_ms]
        _, spent, held = self._run("reading", self._reserve, keys=self._keys(account), args=args)
        return float(spent), float(held)

    def _sum(self, key: str) -> float:
        values = self._run("reading", self.client.hvals, name=key)
        return float(sum(float(v) for v in values))

    def spent(self, account: str | None = None) -> float:
        if account is None:
            return self._sum(self._spent_key)
        return self._read(account)[0]

    def reserved(self, account: str | None = None) -> float:
        if account is None:
            return self._sum(self._held_key)
        return self._read(account)[1]


__all__ = ["RedisLedger"]
