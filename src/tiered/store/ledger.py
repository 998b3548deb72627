"""Where a budget keeps its accounts: spend settled and reservations open, per account.

:class:`~tiered.models.llm.Budget` holds the rules (caps, what a reservation may be,
how a charge is capped, the error a refusal raises); a :class:`Ledger` holds the numbers
and makes the one step that must be atomic, "reserve only if spent + reserved + amount
stays within the cap", atomic wherever the numbers live:

- :class:`MemoryLedger`: one process (a lock), settled spend optionally kept across
  restarts by a :class:`SpendLog` (the gateway's SQLite store);
- :class:`tiered.store.redis_spend.RedisLedger`: shared by every gateway replica on one
  Redis (a Lua script per step); reservations expire, so a replica that dies mid-request
  does not hold its keys' budget forever.

>>> ledger = MemoryLedger()
>>> hold = ledger.reserve("alice", 0.6, limit=1.0)
>>> hold.granted, ledger.reserve("alice", 0.6, limit=1.0).granted
(True, False)
>>> ledger.settle("alice", hold.token, 0.6, charge=0.5)
True
>>> ledger.spent("alice"), ledger.reserved("alice")
(0.5, 0.0)
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


def over_limit(spent: float, held: float, usd: float, limit: float | None) -> bool:
    """Whether reserving ``usd`` more could pass ``limit`` (None: no limit). A request
    whose worst case is unknown (0) still needs some budget left."""
    if limit is None:
        return False
    return spent + held + usd > limit or spent + held >= limit


@dataclass(frozen=True, slots=True)
class Hold:
    """What a reservation attempt found: granted or not, and the account's spend and
    open reservations before it (for the refusal's message)."""

    granted: bool
    token: str  # names the reservation in the ledger ("" when refused)
    spent: float
    held: float


class SpendLog(Protocol):
    """Where settled spend is kept across restarts (the gateway's store:
    :class:`tiered.store.gateway_spend.SpendTable`)."""

    def totals(self) -> dict[str, float]:
        """Spend so far per account."""
        ...

    def add(self, account: str, usd: float) -> None:
        """Record ``usd`` more spent by ``account``."""
        ...


@runtime_checkable
class Ledger(Protocol):
    """Spend and open reservations per account; every method is safe from any thread."""

    def reserve(self, account: str, usd: float, limit: float | None) -> Hold:
        """Hold ``usd`` for ``account`` unless :func:`over_limit` says it could pass
        ``limit``; check and hold are one atomic step."""
        ...

    def settle(self, account: str, token: str, usd: float, charge: float) -> bool:
        """End reservation ``token`` (of ``usd``) and add ``charge`` to the account's spend,
        in one step. False when the reservation was no longer held (it expired): the
        charge is still added, since it was spent."""
        ...

    def spent(self, account: str | None = None) -> float:
        """Settled spend of ``account`` (None: all accounts together)."""
        ...

    def reserved(self, account: str | None = None) -> float:
        """Open reservations of ``account`` (None: all accounts together)."""
        ...


class MemoryLedger:
    """A :class:`Ledger` in this process's memory (see the module docstring)."""

    def __init__(self, spend_log: SpendLog | None = None) -> None:
        self._log = spend_log
        self._lock = threading.Lock()
        self._spent: dict[str, float] = dict(spend_log.totals()) if spend_log is not None else {}
        self._reserved: dict[str, float] = {}
        self._holds: dict[str, float] = {}
        self._tokens = itertools.count(1)

    def reserve(self, account: str, usd: float, limit: float | None) -> Hold:
        with self._lock:
            spent, held = self._spent.get(account, 0.0), self._reserved.get(account, 0.0)
            if over_limit(spent, held, usd, limit):
                return Hold(False, "", spent, held)
            token = str(next(self._tokens))
            self._holds[token] = usd
            self._reserved[account] = held + usd
        return Hold(True, token, spent, held)

    def settle(self, account: str, token: str, usd: float, charge: float) -> bool:
        with self._lock:
            found = self._holds.pop(token, None) is not None
            if found:
                left = self._reserved.get(account, 0.0) - usd
                # float sums drift; never leave a negative or dust reservation behind
                self._reserved[account] = left if left > 1e-15 else 0.0
            if charge > 0:
                self._spent[account] = self._spent.get(account, 0.0) + charge
                if self._log is not None:
                    self._log.add(account, charge)
        return found

    def spent(self, account: str | None = None) -> float:
        if account is None:
            return sum(self._spent.values())
        return self._spent.get(account, 0.0)

    def reserved(self, account: str | None = None) -> float:
        if account is None:
            return sum(self._reserved.values())
        return self._reserved.get(account, 0.0)


__all__ = ["Hold", "Ledger", "MemoryLedger", "SpendLog", "over_limit"]
