"""What LLM calls cost, and the one budget that caps spending (stages and gateway alike).

:class:`Budget` holds USD caps per *account* (the empty account for a run's stages, a key
name in the gateway). Spending goes in two steps:

1. :meth:`Budget.reserve` holds a call's (or a request's) worst case, and refuses
   (:class:`~tiered.errors.BudgetExceededError`) when spend + open reservations + this
   one could pass the account's cap: concurrent calls can never together overspend;
2. :meth:`Budget.settle` replaces the reservation with the real cost, atomically. A
   *bounded* reservation (a true worst case) caps the charge: usage reported above it is
   charged at the reservation and logged as a warning, so an upstream that over-reports
   tokens cannot take spend past the cap.

Every method is thread-safe and never awaits: one budget may be shared by stages on
different event loops and by the gateway's loop (and a settle on a cancellation path
cannot itself be cancelled). The numbers live in a
:class:`~tiered.store.ledger.Ledger`: this process's memory by default (a
:class:`SpendLog`, the gateway's store, makes settled spend survive a restart), or Redis
for gateway replicas (:class:`tiered.store.redis_spend.RedisLedger`), where the check and
the reservation are one atomic step across processes.

>>> b = Budget(1.0)
>>> r = b.reserve(0.6)
>>> b.settle(r, 5.0)  # over-reported: charged at most what was reserved
0.6
>>> b.remaining()
0.4
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from tiered.core.items import Item
from tiered.errors import BudgetExceededError
from tiered.store.ledger import Ledger, MemoryLedger, SpendLog

log = logging.getLogger(__name__)

# per-message overhead of a chat request (role, separators) in the worst-case count
MESSAGE_OVERHEAD_TOKENS = 8


class Prices(BaseModel):
    """What a call costs in USD."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    usd_per_input_token: float = Field(default=0.0, ge=0)
    usd_per_output_token: float = Field(default=0.0, ge=0)
    usd_per_request: float = Field(default=0.0, ge=0)

    def of(self, tokens_in: float, tokens_out: float) -> float:
        return (
            self.usd_per_request
            + tokens_in * self.usd_per_input_token
            + tokens_out * self.usd_per_output_token
        )


def input_token_bound(messages: str | Sequence[Mapping[str, Any]]) -> int:
    """Most tokens a prompt can make: its UTF-8 bytes (a byte-level tokenizer never makes
    more), plus a per-message allowance for chat roles and separators."""
    if isinstance(messages, str):
        return len(messages.encode()) + MESSAGE_OVERHEAD_TOKENS
    return sum(len(str(m.get("content", "")).encode()) + MESSAGE_OVERHEAD_TOKENS for m in messages)


@runtime_checkable
class PricedModel(Protocol):
    """A model that can bound what answering costs before it answers (the gateway reserves
    this against the caller's budget)."""

    def worst_case_cost(self, items: Sequence[Item]) -> float:
        """The most answering ``items`` can cost, in USD (each item's ``params`` included)."""
        ...


@dataclass(slots=True)
class Reservation:
    """Budget held for one call or request until it is settled or released."""

    account: str
    usd: float
    # usd is a true worst case: the charge is capped at it. False: a lower estimate
    # (some stage could not bound its cost); the charge is what is reported.
    bounded: bool = True
    settled: bool = False
    token: str = ""  # names it in the budget's ledger


class Budget:
    """USD caps per account; reserve the worst case first, settle to the real cost.

    ``max_usd`` is every account's cap (None: unlimited) unless ``per_account`` names
    one. ``ledger`` keeps the numbers (default: a :class:`MemoryLedger` over
    ``spend_log``). See the module docstring.
    """

    def __init__(
        self,
        max_usd: float | None = None,
        *,
        per_account: Mapping[str, float] | None = None,
        spend_log: SpendLog | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        if ledger is not None and spend_log is not None:
            raise ValueError("give a ledger or a spend_log, not both (a ledger keeps its own)")
        self.max_usd = max_usd
        self.per_account = dict(per_account or {})
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger(spend_log)
        self._lock = threading.Lock()  # guards Reservation.settled

    def __repr__(self) -> str:
        return f"Budget(max_usd={self.max_usd}, spent_usd={self.spent_usd:.6f})"

    # ------------------------------------------------------------------ reading

    def limit(self, account: str = "") -> float | None:
        """The account's cap in USD (None: unlimited)."""
        return self.per_account.get(account, self.max_usd)

    def spent(self, account: str = "") -> float:
        return self.ledger.spent(account)

    def reserved(self, account: str = "") -> float:
        return self.ledger.reserved(account)

    def remaining(self, account: str = "") -> float | None:
        """What the account may still reserve (None: unlimited)."""
        limit = self.limit(account)
        if limit is None:
            return None
        return max(limit - self.spent(account) - self.reserved(account), 0.0)

    @property
    def spent_usd(self) -> float:
        """Spend settled so far, all accounts together."""
        return self.ledger.spent(None)

    @property
    def reserved_usd(self) -> float:
        """Reservations open now, all accounts together."""
        return self.ledger.reserved(None)

    # ------------------------------------------------------------------ spending

    def reserve(
        self, usd: float, *, account: str = "", bounded: bool = True, what: str = "a call"
    ) -> Reservation:
        """Hold ``usd`` for ``account``, or raise :class:`BudgetExceededError`.

        A request whose worst case is unknown (0) still needs some budget left.
        """
        if not math.isfinite(usd) or usd < 0:
            raise ValueError(f"a reservation must be a finite amount >= 0, not {usd!r}")
        limit = self.limit(account)
        hold = self.ledger.reserve(account, usd, limit)
        if not hold.granted:
            whose = f"the budget of '{account}'" if account else "the cap max_usd"
            raise BudgetExceededError(
                f"{what} could cost up to ${usd:.6g}; with ${hold.spent:.6g} spent and "
                f"${hold.held:.6g} in flight that may exceed {whose} (${limit:.6g})"
            )
        return Reservation(account, usd, bounded, token=hold.token)

    def settle(self, reservation: Reservation, actual_usd: float) -> float:
        """Replace ``reservation`` by the real cost; returns what was charged.

        The charge of a bounded reservation never exceeds it. Settling twice is a no-op
        (returns 0): a reservation is charged once, whatever path ends the call.
        """
        actual = actual_usd if math.isfinite(actual_usd) and actual_usd > 0 else 0.0
        with self._lock:
            if reservation.settled:
                return 0.0
            reservation.settled = True
        capped = reservation.bounded and actual > reservation.usd
        charge = reservation.usd if capped else actual
        held = self.ledger.settle(reservation.account, reservation.token, reservation.usd, charge)
        if not held:
            log.warning(
                "a reservation of $%.6g for '%s' had expired before it was settled "
                "(a request outlived its hold): charged $%.6g",
                reservation.usd,
                reservation.account,
                charge,
            )
        if capped:
            log.warning(
                "reported cost $%.6g is above its reservation $%.6g: charged $%.6g",
                actual,
                reservation.usd,
                charge,
            )
        return charge

    def release(self, reservation: Reservation) -> None:
        """Give the reservation back unused (the call was never made or failed)."""
        self.settle(reservation, 0.0)


__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "Budget",
    "PricedModel",
    "Prices",
    "Reservation",
    "SpendLog",
    "input_token_bound",
]
