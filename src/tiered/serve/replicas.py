"""Gateway replicas: several ``tiered serve`` processes that act as one service.

With ``server.shared: redis://HOST:PORT/DB`` every replica keeps its state in that Redis
instead of its own memory or SQLite store (:class:`SharedState`):

- **budgets**: each key's spend and open reservations
  (:class:`~tiered.store.redis_spend.RedisLedger` behind the one
  :class:`~tiered.models.llm.Budget`); a reservation is checked and made in one atomic
  step, so the replicas together never pass a key's budget;
- **response cache** (``server.response_cache: true``): what one replica paid for,
  every replica reuses (:class:`~tiered.store.redis_cache.RedisResponseCache`);
- **online learning**: an online classify cascade learns as one, as the workers of a
  Redis stream do (:class:`~tiered.online.fleet.Fleet`): expert labels shared, audit
  counts shared, snapshots from which a new replica starts.

What stays per replica: the in-flight limit (``max_in_flight``), the metrics, a stage's own
``max_usd`` cap, and the deferral heads of online cascades (they learn from each
replica's own answers).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tiered.serve.config import GatewayConfig
from tiered.store.redis_cache import RedisResponseCache
from tiered.store.redis_shared import SharedURL, parse_shared_url
from tiered.store.redis_spend import RedisLedger

if TYPE_CHECKING:
    import redis

    from tiered.online.fleet import Fleet

# a reservation outlives the longest deadline by this much before it expires (a request
# is settled when its deadline passes; the margin covers a slow settle)
HOLD_MARGIN_S = 60.0


def hold_ttl_s(config: GatewayConfig) -> float:
    """How long a budget reservation lives unsettled: the longest deadline, doubled, plus
    :data:`HOLD_MARGIN_S`."""
    longest = max(c.deadline_s or config.server.deadline_s for c in config.cascades)
    return 2 * longest + HOLD_MARGIN_S


def replica_name() -> str:
    """This process's name among the replicas (host, PID and a random part)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class SharedState:
    """What this replica shares with the others (see the module docstring)."""

    url: SharedURL
    client: redis.Redis  # str replies
    ledger: RedisLedger
    cache: RedisResponseCache
    replica: str

    @classmethod
    def open(cls, config: GatewayConfig) -> SharedState:
        """Connect to ``config.server.shared`` (a :class:`~tiered.errors.StoreError` when
        it cannot be reached)."""
        assert config.server.shared is not None
        url = parse_shared_url(config.server.shared)
        client = url.client()
        return cls(
            url=url,
            client=client,
            ledger=RedisLedger(client, url.prefix, hold_ttl_s=hold_ttl_s(config)),
            cache=RedisResponseCache(
                client, url.prefix, ttl_s=url.cache_ttl_s, max_bytes=url.cache_max_bytes
            ),
            replica=replica_name(),
        )

    def fleet(self, cascade: str, identity: str) -> Fleet:
        """This replica's share of online cascade ``cascade`` (keys
        ``PREFIX:online:CASCADE:*``); ``identity`` tells snapshots of other configs apart."""
        from tiered.online.fleet import Fleet

        return Fleet(
            self.client,
            self.url.client(decode=False),  # the snapshot blob is bytes; closed by the fleet
            self.url.key("online", cascade),
            self.replica,
            identity,
            snapshot_every_s=self.url.snapshot_every_s,
            learn_before=False,  # the cascade runs on the event loop: learn off it, after
        )

    def close(self) -> None:
        self.client.close()


__all__ = ["HOLD_MARGIN_S", "SharedState", "hold_ttl_s", "replica_name"]
