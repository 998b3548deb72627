"""``OpenAIChat``: any OpenAI-compatible endpoint as a cascade stage, with training-free signals.

Cascade file form::

    model:
      kind: openai
      base_url: https://api.openai.com/v1
      model: gpt-4o-mini
      api_key_env: OPENAI_API_KEY        # the NAME of the variable; the key is never stored
      mode: classify                     # or generate
      labels: [fresh, rotten]
      words: {fresh: positive, rotten: negative}   # what the model says for each label
      prices: {usd_per_input_token: 1.5e-7, usd_per_output_token: 6.0e-7}
      max_usd: 5.0                       # refuse any call that could take spend past $5

What the answers carry, by mode:

- ``classify``: the answer normalised to the label set (``None`` when outside it: the
  item is passed on), ``probs`` over the labels from the ``top_logprobs`` of the answer's
  first non-blank token (label words matched by their first token, leading space and case
  ignored; mass normalised over the label set), else from the votes of ``samples`` k
  answers; signal ``logprob`` = log of the (unnormalised) probability of the answer label.
- ``generate``: the answer text (normalised by ``normalizer``, a registered name: exact,
  casefold, number, choice, or one a plugin registered); signals ``logprob``
  (= ``logprob_sum``), ``logprob_mean``, ``logprob_min`` and a quantile (``logprob_q10``).
- both: with ``samples: k > 1`` the answer is the majority of k sampled answers and the
  ``vote`` signal its share (Mixture-of-Thought vote); with ``verify_prompt`` a second prompt
  variant is asked too and the signal ``verify`` is 1.0 when both agree after normalisation,
  else 0.0 (``{kind: threshold, signal: verify, threshold: 1}`` accepts agreement).
- ``tools: true`` (generate, chat endpoint): the item's ``tools``, ``tool_choice`` and
  ``parallel_tool_calls`` are sent upstream and tool calls read back
  (``extra["tool_calls"]``, signal ``tool_call``: see :mod:`~tiered.models.llm.tools`).

Robustness: requests go through a :class:`~tiered.models.llm.transport.Transport`
(aiohttp by default); every failure is a :mod:`tiered.errors` error. 429, 5xx, 408/409,
connection errors, timeouts and malformed responses are retried with exponential backoff
and jitter (``Retry-After`` is honoured); a response over ``max_response_bytes`` is
refused. At most ``max_concurrency`` requests are in flight. Identical requests in flight
at once are sent once and shared, but only between calls of the same caller (the
gateway's API key, see :func:`caller_scope`), and a caller that leaves never cancels the
call for the others. With ``max_usd`` a call is refused
(:class:`~tiered.errors.BudgetExceededError`) before it *could* take the run's spend past
the cap: its worst case (input bytes as tokens, ``max_tokens`` out) is reserved first and
settled to the real usage afterwards, never above the reservation. With a response cache
(the state store's ``llm_cache`` table) the same request is never paid for twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Coroutine, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import ConfigError, UpstreamError
from tiered.models._params import spec_from_kwargs, spec_from_mapping
from tiered.models.llm.labels import LabelSet, Normalizer, resolve_normalizer
from tiered.models.llm.pricing import Budget, Reservation
from tiered.models.llm.prompts import LLMRequest, OpenAIChatSpec, build_requests
from tiered.models.llm.responses import (
    CallResult,
    MalformedResponseError,
    Reading,
    assemble_answers,
    decode_json,
    parse_response,
)
from tiered.models.llm.tools import ToolRequest
from tiered.models.llm.transport import (
    AiohttpTransport,
    HttpRequest,
    HttpResponse,
    Transport,
    map_http_status,
    redact,
    upstream_message,
)
from tiered.store.response_cache import ResponseCache, ResponseStore, request_key

log = logging.getLogger(__name__)

T = TypeVar("T")

# who is asking: identical in-flight requests are shared only within one caller
_CALLER: ContextVar[str] = ContextVar("tiered_llm_caller", default="")


@contextlib.contextmanager
def caller_scope(name: str) -> Iterator[None]:
    """Calls made inside share in-flight requests only with calls of the same ``name``.

    The gateway wraps each request in its API key's scope, so one client's requests are
    never joined to (and never cancelled with) another client's.
    """
    token = _CALLER.set(name)
    try:
        yield
    finally:
        _CALLER.reset(token)


# ---------------------------------------------------------------------------- event loops


class _LoopThread:
    """A private event loop in a daemon thread: ``predict`` runs ``apredict`` on it.

    One loop for every sync call keeps the HTTP connection pool warm across calls, and it
    works whether or not the caller's thread already runs an event loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tiered-llm", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("predict() called from the model's own loop; await apredict()")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self, transport: Transport | None = None) -> None:
        """Close ``transport``'s connections and every async-generator closer on the loop,
        then stop it."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is self.thread:  # garbage-collected on the loop itself
            self.loop.call_soon(self.loop.stop)
            return
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                if transport is not None:
                    done = asyncio.run_coroutine_threadsafe(transport.aclose(), self.loop)
                    done.result(timeout=10)
                fut = asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop)
                fut.result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


@dataclass(eq=False)
class _Shared:
    """One upstream call shared by every caller that asked for it while it ran."""

    task: asyncio.Task[CallResult]
    waiters: int = 0


@dataclass
class _LoopState:
    """Per event loop: the concurrency limit and the calls in flight."""

    semaphore: asyncio.Semaphore
    inflight: dict[tuple[str, str], _Shared] = field(default_factory=dict)


def _forget(
    inflight: dict[tuple[str, str], _Shared], join: tuple[str, str], shared: _Shared, _: Any
) -> None:
    if inflight.get(join) is shared:
        del inflight[join]


# ---------------------------------------------------------------------------- the model


class OpenAIChat:
    """An OpenAI-compatible endpoint as a cascade stage (see the module docstring).

    Build from a spec or keywords: ``OpenAIChat(model="gpt-4o-mini", labels=["a", "b"])``.
    ``transport`` replaces the HTTP client (a :class:`MockTransport` in unit tests; not
    kept by a pickled copy). ``predict`` is the sync wrapper of ``apredict`` (it runs on a
    private event loop thread). Connections close with :meth:`close` / :meth:`aclose`,
    the context manager, the end of ``asyncio.run``, or when the model is collected.
    """

    def __init__(
        self,
        spec: OpenAIChatSpec | None = None,
        *,
        cache: ResponseStore | str | Path | bool | None = None,
        budget: Budget | None = None,
        normalizer: Normalizer | str | None = None,
        transport: Transport | None = None,
        rng: random.Random | None = None,
        **params: Any,
    ) -> None:
        if isinstance(normalizer, str):  # a registered name: a spec field
            params["normalizer"], normalizer = normalizer, None
        spec = spec_from_kwargs(OpenAIChatSpec, spec, params)
        self.spec = spec
        self.name = spec.stage_name
        # a path opens the cache there; the spec's own `cache` field is for the builder
        if isinstance(cache, bool):  # cache=False reads naturally as "no cache"
            if cache:
                raise ConfigError(
                    "cache=True needs a place to keep responses: pass cache=PATH (a SQLite "
                    "file) or a ResponseCache",
                    field="cache",
                )
            cache = None
        self.cache: ResponseStore | None = (
            ResponseCache(cache) if isinstance(cache, str | Path) else cache
        )
        self.budget = budget if budget is not None else Budget(spec.max_usd)
        self.normalize = normalizer or resolve_normalizer(spec.normalizer)
        self.labels = LabelSet(spec.labels, spec.words) if spec.mode == "classify" else None
        self.tags = ModelTags(
            gives_probabilities=spec.mode == "classify",
            stochastic=spec.samples > 1 and spec.sample_temperature > 0,
            generates_text=spec.mode == "generate",
            asynchronous=True,
            needs_server=True,
        )
        if spec.api_key_env is not None and not os.environ.get(spec.api_key_env):
            raise ConfigError(
                f"the environment variable {spec.api_key_env!r} named by 'api_key_env' is not "
                "set (set it to the API key, or use api_key_env: null for a server without auth)",
                field="model.api_key_env",
            )
        self._rng = rng or random.Random()
        self._base_url = spec.base_url.rstrip("/")
        self._path = "/chat/completions" if spec.endpoint == "chat" else "/completions"
        # the labels' or the normaliser's own function: no reference back to the model
        self._reading = Reading(
            self.labels.label_of_text if self.labels is not None else self.normalize,
            self.labels,
            spec.samples,
            spec.verify_prompt is not None,
            spec.logprob_quantile,
        )
        self.transport = transport or AiohttpTransport(
            self._base_url,
            api_key=self._api_key(),
            timeout_s=spec.timeout_s,
            max_connections=spec.max_concurrency,
            max_response_bytes=spec.max_response_bytes,
        )
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._runner: _LoopThread | None = None
        self._runner_lock = threading.Lock()
        self.calls = 0  # requests sent upstream (each retry counts)

    @property
    def supports_tools(self) -> bool:
        """Requests with tools may come here (``tools: true``; see :mod:`.tools`)."""
        return self.spec.tools

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"OpenAIChat(name={self.name!r}, model={s.model!r}, base_url={self._base_url!r}, "
            f"endpoint={s.endpoint!r}, mode={s.mode!r}, api_key_env={s.api_key_env!r})"
        )

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> OpenAIChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # connections are not copied: the copy opens its own. Neither is the budget: a
        # copy starts with the full max_usd (share one Budget across processes yourself)
        return {
            "spec": self.spec,
            "cache": self.cache.path if self.cache is not None else None,
            "normalize": self.normalize,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["spec"], cache=state["cache"], normalizer=state["normalize"]
        )

    def _api_key(self) -> str | None:
        env = self.spec.api_key_env
        return os.environ.get(env) if env else None

    def _secrets(self) -> tuple[str, ...]:
        key = self._api_key() or ""
        return (key,) if len(key) >= 4 else ()

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(asyncio.Semaphore(self.spec.max_concurrency))
        return state

    async def aclose(self) -> None:
        """Close the transport's connections on the running loop."""
        self._states.pop(asyncio.get_running_loop(), None)
        await self.transport.aclose()

    def close(self) -> None:
        """Close the private loop's connections and stop its thread (sync callers)."""
        with self._runner_lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close(self.transport)

    # ------------------------------------------------------------------ requests

    def _requests(self, items: Sequence[Item]) -> list[LLMRequest]:
        return build_requests(self.spec, self.labels, items)

    def worst_case_cost(self, items: Sequence[Item]) -> float:
        """The most answering ``items`` can cost: what the budget reserves for their calls.

        Each call's output is bounded by the item's own ``max_tokens`` (see
        :func:`~tiered.models.llm.prompts.caller_params`) or the spec's.
        """
        return float(sum(r.worst_usd for r in self._requests(items)))

    async def _call(self, state: _LoopState, req: LLMRequest) -> CallResult:
        key = request_key(self._base_url, {"endpoint": self.spec.endpoint, **req.params})
        t0 = time.perf_counter()
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                log.debug("cache hit %s model=%s", key[:12], self.spec.model)
                choices, _, _ = parse_response(self.spec.endpoint, hit.response)
                ms = (time.perf_counter() - t0) * 1e3
                return CallResult(
                    choices, hit.tokens_in, hit.tokens_out, 0.0, ms, True, hit.usd, hit.latency_ms
                )
        join = (_CALLER.get(), key)
        shared = state.inflight.get(join)
        leader = shared is None
        if shared is None:
            # its own task: a caller that is cancelled leaves it running for the others
            shared = _Shared(asyncio.ensure_future(self._send(state, req, key)))
            state.inflight[join] = shared
            shared.task.add_done_callback(functools.partial(_forget, state.inflight, join, shared))
        shared.waiters += 1
        try:
            res = await asyncio.shield(shared.task)
        finally:
            shared.waiters -= 1
            if shared.waiters == 0 and not shared.task.done():
                shared.task.cancel()  # nobody waits for it any more
        if leader:
            return res
        ms = (time.perf_counter() - t0) * 1e3  # the same request already on its way: pay once
        return CallResult(
            res.choices, res.tokens_in, res.tokens_out, 0.0, ms, True, res.usd, res.latency_ms
        )

    async def _send(self, state: _LoopState, req: LLMRequest, key: str) -> CallResult:
        s = self.spec
        request = HttpRequest.post_json(self._path, req.params)
        attempt = 0
        while True:
            reservation: Reservation | None = None
            reply: HttpResponse | None = None
            try:
                async with state.semaphore:
                    # reserved only while in flight, so queued calls do not hold the budget
                    reservation = self.budget.reserve(req.worst_usd, what=f"a call to {s.model}")
                    self.calls += 1
                    log.debug("call model=%s endpoint=%s attempt=%d", s.model, s.endpoint, attempt)
                    t0 = time.perf_counter()
                    reply = await self.transport.send(request)
                    latency = (time.perf_counter() - t0) * 1e3
                data, (choices, t_in, t_out) = self._read(reply)
            except UpstreamError as err:
                if reservation is not None:
                    self.budget.release(reservation)
                if not err.retryable or attempt >= s.max_retries:
                    raise self._located(err, attempt + 1) from (err.__cause__ or err)
                delay = self._backoff(attempt, err.retry_after_s)
                self._log_retry(err, reply, delay, attempt)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            except BaseException:
                if reservation is not None:
                    self.budget.release(reservation)
                raise
            # no usage reported: charge the worst case, so the cap still holds
            reported = s.prices.of(t_in, t_out) if t_in is not None and t_out is not None else None
            usd = self.budget.settle(reservation, reservation.usd if reported is None else reported)
            if self.cache is not None:
                self.cache.put(
                    key,
                    base_url=self._base_url,
                    request={"endpoint": s.endpoint, **req.params},
                    response=data,
                    tokens_in=t_in,
                    tokens_out=t_out,
                    usd=usd,
                    latency_ms=latency,
                )
            return CallResult(choices, t_in, t_out, usd, latency, False, usd, latency)

    def _read(self, reply: HttpResponse) -> tuple[Any, Any]:
        """The response's JSON and its parse; an error status or bad body raises."""
        if reply.status >= 400:
            raise map_http_status(
                reply.status, reply.body, secrets=self._secrets(), retry_after=reply.retry_after
            )
        try:
            data = decode_json(reply.body)
            return data, parse_response(self.spec.endpoint, data)
        except MalformedResponseError as exc:
            raise UpstreamError(
                f"malformed response: {exc}", status=reply.status, retryable=True
            ) from exc

    def _located(self, err: UpstreamError, attempts: int) -> UpstreamError:
        """``err`` naming the model and server, and how many attempts were made."""
        tail = f" (after {attempts} attempts)" if attempts > 1 else ""
        return type(err)(
            f"{self.spec.model} at {self._base_url}: {err}{tail}",
            status=err.status,
            retryable=err.retryable,
            retry_after_s=err.retry_after_s,
        )

    def _log_retry(
        self, err: UpstreamError, reply: HttpResponse | None, delay: float, attempt: int
    ) -> None:
        # status and error type only: the upstream's text can echo the prompt
        status = f" HTTP {err.status}" if err.status is not None else ""
        log.info(
            "retrying %s in %.2fs (attempt %d): %s%s",
            self.spec.model,
            delay,
            attempt + 1,
            type(err).__name__,
            status,
        )
        if reply is not None and log.isEnabledFor(logging.DEBUG):
            text = upstream_message(reply.body)
            log.debug("upstream said: %s", redact(text, self._secrets()))

    def _backoff(self, attempt: int, retry_after_s: float | None = None) -> float:
        s = self.spec
        cap = min(s.backoff_max_s, s.backoff_s * 2**attempt)
        delay = cap * (0.5 + 0.5 * self._rng.random())  # jitter: spread retries of many calls
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, s.backoff_max_s))
        return delay

    # ------------------------------------------------------------------ answering

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        """Answer ``items`` (all requests concurrently, at most ``max_concurrency`` in flight).

        The first failure fails the batch: calls not yet answered are cancelled.
        """
        reqs = self._requests(items)
        tools = [ToolRequest.of(it.params) for it in items] if self.spec.tools else None
        if not reqs:
            return assemble_answers(len(items), [], self._reading, tools)
        state = self._state()
        if len(reqs) == 1:  # one call: no task to create (a per-call overhead saved)
            results = [await self._call(state, reqs[0])]
        else:
            tasks = [asyncio.ensure_future(self._call(state, r)) for r in reqs]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for t in tasks:
                    t.cancel()  # no-op for the finished ones
                await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:  # the first failure in request order, not a follow-on cancel
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            results = [t.result() for t in tasks]
        calls = [(r.item, r.variant, res) for r, res in zip(reqs, results, strict=True)]
        return assemble_answers(len(items), calls, self._reading, tools)

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        """Sync :meth:`apredict`; works whether or not the calling thread runs a loop."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = _LoopThread()
                # closes the connections and stops the thread when the model is collected
                weakref.finalize(self, self._runner.close, self.transport)
            runner = self._runner
        return runner.run(self.apredict(items))


# ---------------------------------------------------------------------------- building


def _resolve_cache(spec: OpenAIChatSpec, ctx: BuildContext) -> ResponseStore | None:
    if spec.cache is False:
        return None
    if spec.cache is True:
        given = ctx.resources.get("response_cache")
        if isinstance(given, ResponseStore):
            return given
        store = ctx.resources.get("store_path")
        if store is None:
            return None
        path = Path(store)
    else:
        path = Path(spec.cache)
        if not path.is_absolute():
            path = ctx.base_dir / path
    key = f"response_cache:{path.resolve()}"
    cache = ctx.resources.get(key)
    if cache is None:  # one connection per store file, shared by every stage on it
        cache = ctx.resources[key] = ResponseCache(path)
    return cache  # type: ignore[no-any-return]


@register_model("openai")
def build_openai_chat(spec: dict[str, Any], ctx: BuildContext) -> OpenAIChat:
    """Build an :class:`OpenAIChat` from its cascade-file mapping.

    ``ctx.resources`` may hold ``response_cache`` (a :class:`ResponseStore`), ``store_path``
    (the run's SQLite store, cache table added there) and ``budget`` (a :class:`Budget`
    shared by several stages).
    """
    parsed = spec_from_mapping(OpenAIChatSpec, spec)
    budget = ctx.resources.get("budget")
    return OpenAIChat(
        parsed,
        cache=_resolve_cache(parsed, ctx),
        budget=budget if isinstance(budget, Budget) else None,
    )


__all__ = ["OpenAIChat", "OpenAIChatSpec", "build_openai_chat", "caller_scope"]
