"""The gateway's shared state and the path every cascade request takes.

``Gateway.execute`` is that path: take an in-flight slot (429 when none is free),
reserve the caller's worst-case cost in the key's :class:`~tiered.models.llm.Budget`
(402 when it cannot cover it), run the cascade under the request's deadline (504 when it
passes), settle the budget with what the stages actually cost (never more than was
reserved, when every stage could bound its cost), whatever happened. Upstream calls are
shared only between requests of the same key (:func:`~tiered.models.llm.caller_scope`),
so one client's cancellation never reaches another. The serving classes only translate
between the wire formats and this path.

With ``server.shared`` the budgets, the response cache and online learned state live in
Redis, shared by every replica (:mod:`tiered.serve.replicas`); a reservation that Redis
cannot take is a 503, never an unchecked request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tiered.core.items import Item
from tiered.errors import BudgetExceededError, StoreError, UpstreamError
from tiered.models.llm.openai_chat import caller_scope
from tiered.models.llm.pricing import Budget, Reservation
from tiered.serve.auth import KeyRing, Principal
from tiered.serve.config import BudgetSettings, GatewayConfig
from tiered.serve.engine import CURRENT_TALLY, ItemOutcome, ServedCascade, Tally
from tiered.serve.errors import (
    BudgetDeniedError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    SharedStateError,
)
from tiered.serve.metrics import GatewayMetrics
from tiered.serve.replicas import SharedState
from tiered.serve.tracing import CURRENT_RECORD, RequestTracer
from tiered.store.gateway_spend import SpendTable
from tiered.store.ledger import Ledger

logger = logging.getLogger("tiered.serve")


@dataclass(slots=True)
class Execution:
    """What one request's cascade run produced."""

    request_id: str
    cascade: str
    outcomes: list[ItemOutcome]
    cost_usd: float
    tally: Tally


class InFlightLimiter:
    """At most ``limit`` requests run a cascade at once; the rest are refused, not queued.

    Refusing at once (429 + Retry-After) keeps latency bounded under overload and lets
    the client's retry policy spread the load; a queue would only hide it.
    """

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.count = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        # no await between check and increment: atomic on the event loop
        if self.count >= self.limit:
            raise OverloadedError(
                f"the gateway is at its limit of {self.limit} requests in flight; retry later",
                headers={"retry-after": str(self.retry_after_s)},
            )
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


def start_local_servers(config: GatewayConfig) -> dict[str, Any]:
    """Start the config's llama.cpp servers (all or none: a failure stops the started)."""
    if not config.servers:
        return {}
    from tiered.models.llm.llama_server import LlamaServer

    started: dict[str, Any] = {}
    try:
        for name, s in config.servers.items():
            logger.info("starting local server '%s' (llama_cpp.server)", name)
            started[name] = LlamaServer(
                s.model_path,
                model_alias=s.model_alias,
                n_ctx=s.n_ctx,
                n_threads=s.n_threads,
                extra_args=s.extra_args,
                startup_timeout_s=s.startup_timeout_s,
            ).start()
    except BaseException:
        for srv in started.values():
            srv.stop()
        raise
    return started


def new_request_id() -> str:
    """32 random hex digits (as ``uuid4().hex`` has, at a fifth of its cost)."""
    return os.urandom(16).hex()


def gateway_budget(
    settings: BudgetSettings, store: sqlite3.Connection | None, ledger: Ledger | None = None
) -> Budget:
    """The keys' budget (one account per key name); the numbers live in ``ledger`` (the
    replicas' Redis) if given, else in memory, with settled spend kept in the store if any."""
    if ledger is not None:
        return Budget(settings.default_usd, per_account=settings.per_key, ledger=ledger)
    log = SpendTable(store) if store is not None else None
    return Budget(settings.default_usd, per_account=settings.per_key, spend_log=log)


class Gateway:
    """Served cascades, keys, budgets, limits and metrics of one gateway process."""

    def __init__(
        self,
        config: GatewayConfig,
        cascades: Sequence[ServedCascade],
        *,
        metrics: GatewayMetrics | None = None,
        keys: KeyRing | None = None,
        store: sqlite3.Connection | None = None,
        debug_log_prompts: bool = False,
        tracer: RequestTracer | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.config = config
        self.server = config.server
        self.metrics = metrics or GatewayMetrics()
        self.keys = keys or KeyRing()
        self.store = store
        # state shared with the other replicas (server.shared); closed by close()
        self.shared = shared
        self.budget = gateway_budget(
            config.budgets, store, shared.ledger if shared is not None else None
        )
        self.limiter = InFlightLimiter(self.server.max_in_flight, self.server.retry_after_s)
        self.cascades = {c.name: c for c in cascades}
        self.debug_log_prompts = debug_log_prompts
        # OpenTelemetry spans (server.tracing); None: nothing recorded, nothing imported
        self.tracer = tracer
        self.started = time.time()
        # llama.cpp servers this gateway started (stopped by close())
        self.local_servers: dict[str, Any] = {}

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        debug_log_prompts: bool = False,
        resources: dict[str, Any] | None = None,
    ) -> Gateway:
        """Build every cascade of ``config`` (loading its models) and open the store."""
        from tiered.serve.online import OnlineServedCascade

        servers = start_local_servers(config)
        store = None
        shared_state = None
        served: list[ServedCascade] = []
        tracer = None
        try:
            if config.server.tracing is not None:
                tracer = RequestTracer(config.server.tracing)
            if config.server.store is not None:
                from tiered.store.sqlite import connect

                store = connect(config.server.store)
            metrics = GatewayMetrics()
            keys = KeyRing.from_settings(config.auth)
            shared: dict[str, Any] = {
                **(resources or {}),
                "store": store,
                "local_servers": {name: srv.base_url for name, srv in servers.items()},
            }
            if config.server.shared is not None:
                shared_state = shared["shared_state"] = SharedState.open(config)
                if config.server.response_cache:
                    shared["response_cache"] = shared_state.cache
            if config.server.response_cache and config.server.store is not None:
                shared["store_path"] = config.server.store  # OpenAIChat's response cache
            for entry in config.cascades:
                kind = ServedCascade
                if entry.online is not None and entry.online.enabled:
                    kind = OnlineServedCascade
                served.append(
                    kind.build(
                        entry, metrics, deadline_s=config.server.deadline_s, resources=shared
                    )
                )
        except BaseException:
            for s in served:
                s.close()
            if tracer is not None:
                tracer.shutdown()
            if store is not None:
                store.close()
            if shared_state is not None:
                shared_state.close()
            for srv in servers.values():
                srv.stop()
            raise
        gateway = cls(
            config,
            served,
            metrics=metrics,
            keys=keys,
            store=store,
            debug_log_prompts=debug_log_prompts,
            tracer=tracer,
            shared=shared_state,
        )
        gateway.local_servers = servers
        return gateway

    def close(self) -> None:
        """Close cascades (online ones save their state), the store, local servers; export
        the spans still queued."""
        try:
            for c in self.cascades.values():
                c.close()
        finally:
            if self.tracer is not None:
                self.tracer.shutdown()
                self.tracer = None
            if self.store is not None:
                self.store.close()
                self.store = None
            if self.shared is not None:
                self.shared.close()
                self.shared = None
            for srv in self.local_servers.values():
                srv.stop()
            self.local_servers = {}

    # ------------------------------------------------------------------ lookups

    def authenticate(self, authorization: str | None) -> Principal:
        return self.keys.authenticate(authorization)

    def cascade(self, model: str, *, task: str | None = None) -> ServedCascade:
        """The cascade served as ``model``; 404 naming ``model`` when there is none."""
        served = self.cascades.get(model)
        if served is None:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist; served models: "
                f"{', '.join(sorted(self.cascades))}",
                param="model",
            )
        if task is not None and served.task != task:
            raise InvalidRequestError(
                f"model '{model}' is a {served.task} cascade; this endpoint needs a {task} one",
                param="model",
                code="wrong_task",
            )
        return served

    # ------------------------------------------------------------------ the request path

    async def execute(
        self,
        served: ServedCascade,
        items: Sequence[Item],
        principal: Principal,
        *,
        request_id: str,
        max_tokens: int | None = None,
    ) -> Execution:
        """Run ``items`` through ``served`` under the limits; see the module docstring."""
        with self.limiter.slot():
            self.metrics.in_flight.inc()
            try:
                return await self._execute(served, items, principal, request_id, max_tokens)
            finally:
                self.metrics.in_flight.dec()

    async def _execute(
        self,
        served: ServedCascade,
        items: Sequence[Item],
        principal: Principal,
        request_id: str,
        max_tokens: int | None,
    ) -> Execution:
        worst = served.worst_case(items, max_tokens)
        try:
            reservation = self.budget.reserve(
                worst.usd, account=principal.name, bounded=worst.bounded, what="this request"
            )
        except BudgetExceededError as exc:
            raise BudgetDeniedError(str(exc), headers={"x-should-retry": "false"}) from exc
        except StoreError as exc:  # the replicas' Redis: no reservation, no request
            logger.error("cannot reserve the request's budget: %s", exc)
            raise SharedStateError(
                "the gateway's shared state is unavailable; retry later",
                headers={"retry-after": str(max(1, self.server.retry_after_s))},
            ) from exc
        tally = Tally()
        record = CURRENT_RECORD.get() if self.tracer is not None else None
        if record is not None:
            record.begin(served.name, served.stage_names, tally)
        token = CURRENT_TALLY.set(tally)
        try:
            with caller_scope(principal.name):
                async with asyncio.timeout(served.deadline_s) as deadline:
                    outcomes = await served.run(items)
        except TimeoutError as exc:
            self._charge(reservation, principal, tally.cost_usd)
            if deadline.expired():
                raise DeadlineExceededError(
                    f"no answer within the deadline of {served.deadline_s:g} s"
                ) from exc
            raise
        except asyncio.CancelledError as exc:
            self._charge(reservation, principal, tally.cost_usd)
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this request was cancelled (its client left)
            # a cancellation that is not this request's must not escape as one
            raise UpstreamError("an upstream call was cancelled", retryable=True) from exc
        except BaseException:
            # a failed request still pays for the stage calls that completed
            self._charge(reservation, principal, tally.cost_usd)
            raise
        finally:
            CURRENT_TALLY.reset(token)
        usd = max(sum(o.cost_usd for o in outcomes), tally.cost_usd)
        charged = self._charge(reservation, principal, usd)
        execution = Execution(request_id, served.name, outcomes, charged, tally)
        if record is not None:
            record.answered(outcomes, charged)
        return execution

    def _charge(self, reservation: Reservation, principal: Principal, usd: float) -> float:
        """Settle the request's reservation (capped when bounded); count what was charged.

        When the shared Redis fails here the request has been answered (and paid for
        upstream): its charge is logged as lost rather than turned into an error, and its
        reservation expires.
        """
        try:
            charged = self.budget.settle(reservation, usd)
        except StoreError as exc:
            logger.error("charge of $%.6g to key '%s' not recorded: %s", usd, principal.name, exc)
            return usd
        if charged > 0:
            self.metrics.budget_spent.labels(principal.name).inc(charged)
        return charged

    # ------------------------------------------------------------------ logging

    def log_request(
        self,
        *,
        request_id: str,
        endpoint: str,
        status: int,
        seconds: float,
        principal: Principal | None = None,
        model: str | None = None,
        execution: Execution | None = None,
        error: str | None = None,
        prompt: Any = None,
        answer: Any = None,
    ) -> None:
        """One line per request: ids, stage, cost, time; prompts only when asked for."""
        if not logger.isEnabledFor(logging.INFO):
            return
        parts = [
            f"request={request_id}",
            f"endpoint={endpoint}",
            f"status={status}",
            f"ms={seconds * 1000:.1f}",
        ]
        if principal is not None:
            parts.append(f"key={principal.name}")
        if model is not None:
            parts.append(f"model={model}")
        if execution is not None:
            stages = ",".join(sorted({o.stage for o in execution.outcomes}))
            parts.append(f"stage={stages}")
            parts.append(f"usd={execution.cost_usd:.6g}")
        if error is not None:
            parts.append(f"error={error}")
        logger.info(" ".join(parts))
        if self.debug_log_prompts and (prompt is not None or answer is not None):
            logger.info("request=%s prompt=%r answer=%r", request_id, prompt, answer)


__all__ = ["Execution", "Gateway", "InFlightLimiter", "new_request_id"]
