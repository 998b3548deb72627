"""Per-key USD budgets, enforced atomically: reserve the worst case before, settle after.

A request first *reserves* its worst-case cost; it is refused (402) when the key's spend
plus every open reservation plus this one would pass the key's budget. When it finishes
the reservation is replaced by what the stages actually cost. Concurrent requests of one
key therefore can never together spend past the budget, as long as the worst-case
estimate holds; when a request costs more than it reserved (an estimate that was too
low), the overshoot is at most that difference and the key's next request is refused.

Check-and-reserve runs under an ``asyncio.Lock`` with no ``await`` inside, so it is
atomic in the gateway's event loop. Settled spend is written to the SQLite store (when
one is configured), so a restart does not reset anyone's budget. One gateway process
per store: reservations live in memory.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass

from tiered.errors import StoreError
from tiered.serve.config import BudgetSettings
from tiered.serve.errors import BudgetDeniedError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_spend (
    key TEXT PRIMARY KEY,
    spent_usd REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


@dataclass(slots=True)
class Reservation:
    key: str
    usd: float
    settled: bool = False


class BudgetLedger:
    """Spend and open reservations per key name."""

    def __init__(self, settings: BudgetSettings, conn: sqlite3.Connection | None = None) -> None:
        self.settings = settings
        self._conn = conn
        self._lock = asyncio.Lock()
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        if conn is not None:
            try:
                conn.execute(_SCHEMA)
                self._spent = dict(conn.execute("SELECT key, spent_usd FROM gateway_spend"))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read gateway spend from the store: {exc}") from exc

    def limit(self, key: str) -> float | None:
        """The key's budget in USD (None: unlimited)."""
        return self.settings.per_key.get(key, self.settings.default_usd)

    def spent(self, key: str) -> float:
        return self._spent.get(key, 0.0)

    def reserved(self, key: str) -> float:
        return self._reserved.get(key, 0.0)

    def remaining(self, key: str) -> float | None:
        limit = self.limit(key)
        if limit is None:
            return None
        return max(limit - self.spent(key) - self.reserved(key), 0.0)

    async def reserve(self, key: str, usd: float) -> Reservation:
        """Hold ``usd`` of the key's budget; 402 when the budget cannot cover it."""
        async with self._lock:
            limit = self.limit(key)
            if limit is not None:
                committed = self.spent(key) + self.reserved(key)
                # a request whose worst case is unknown (0) still needs budget left
                if committed + usd > limit or committed >= limit:
                    raise BudgetDeniedError(
                        f"budget of key '{key}' exhausted: ${limit:.4g} limit, "
                        f"${self.spent(key):.4g} spent, ${self.reserved(key):.4g} reserved by "
                        f"requests in flight; this request may cost up to ${usd:.4g}",
                        headers={"x-should-retry": "false"},
                    )
            self._reserved[key] = self.reserved(key) + usd
            return Reservation(key, usd)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace the reservation with what the request actually cost."""
        async with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            key = reservation.key
            left = self.reserved(key) - reservation.usd
            # float sums drift; never leave a negative or dust reservation behind
            self._reserved[key] = left if left > 1e-15 else 0.0
            if actual_usd > 0:
                self._spent[key] = self.spent(key) + actual_usd
                if self._conn is not None:
                    self._persist(key, actual_usd)

    def _persist(self, key: str, usd: float) -> None:
        assert self._conn is not None
        try:
            self._conn.execute(
                "INSERT INTO gateway_spend (key, spent_usd, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd, "
                "updated_at = excluded.updated_at",
                (key, usd, time.time()),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record gateway spend in the store: {exc}") from exc


__all__ = ["BudgetLedger", "Reservation"]
