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
- ``generate``: the answer text (normalised by ``normalizer``: exact, casefold, number,
  choice or ``module:function``); signals ``logprob`` (= ``logprob_sum``),
  ``logprob_mean``, ``logprob_min`` and a quantile (``logprob_q10`` by default).
- both: with ``samples: k > 1`` the answer is the majority of k sampled answers and the
  ``vote`` signal its share (Mixture-of-Thought vote); with ``verify_prompt`` a second prompt
  variant is asked too and the signal ``verify`` is 1.0 when both agree after normalisation,
  else 0.0 (``{kind: threshold, signal: verify, threshold: 1}`` accepts agreement).

Robustness: every HTTP error becomes a :mod:`tiered.errors` error (the stage posts with
:mod:`tiered.models.upstream_http`'s aiohttp client); 429, 5xx, 408/409, connection errors,
timeouts and malformed responses are retried with exponential backoff and jitter (``Retry-After`` is
honoured); at most ``max_concurrency`` requests are in flight; with ``max_usd`` a call is
refused (:class:`~tiered.errors.BudgetExceededError`) before it *could* take the run's
spend past the cap: its worst case (input bytes as tokens, ``max_tokens`` out) is reserved
first and settled to the real usage afterwards. With a response cache (the state store's
``llm_cache`` table) the same request is never paid for twice, across runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import (
    BudgetExceededError,
    ConfigError,
    DataError,
    UpstreamError,
)
from tiered.models._params import check_labels, check_words, spec_from_kwargs, spec_from_mapping
from tiered.models.upstream_http import UpstreamClient, map_http_status
from tiered.store.response_cache import ResponseCache, request_key

log = logging.getLogger(__name__)

T = TypeVar("T")

# ---------------------------------------------------------------------------- normalisers

Normalizer = Callable[[str], str | None]
_NORMALIZERS: dict[str, Normalizer] = {}


def register_normalizer(name: str) -> Callable[[Normalizer], Normalizer]:
    """Register an answer normaliser under ``name`` (for ``normalizer: NAME`` in configs)."""

    def deco(fn: Normalizer) -> Normalizer:
        _NORMALIZERS[name] = fn
        return fn

    return deco


_EDGE_PUNCT = " \t\r\n\"'`.,;:!?()[]{}*"


@register_normalizer("exact")
def normalize_exact(text: str) -> str | None:
    """The answer as given, surrounding whitespace removed."""
    s = text.strip()
    return s or None


@register_normalizer("casefold")
def normalize_casefold(text: str) -> str | None:
    """Case-folded, inner whitespace collapsed, punctuation and quotes at the edges removed."""
    s = " ".join(text.split()).strip(_EDGE_PUNCT).casefold()
    return s or None


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@register_normalizer("number")
def normalize_number(text: str) -> str | None:
    """The last number in the answer, canonical: "1,234.50" → "1234.5", "7.0" → "7"."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "").replace("$", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_CHOICE_PATTERNS = (
    re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?(?:[.):\s]|$)"),
    re.compile(r"\(([A-J])\)"),
)


@register_normalizer("choice")
def normalize_choice(text: str) -> str | None:
    """A multiple-choice letter A–J: ``"(B)"``, ``"B."``, ``"The answer is b"`` → ``"B"``."""
    for pat in _CHOICE_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1).upper()
    return None


def resolve_normalizer(spec: str | Normalizer) -> Normalizer:
    """A normaliser from a registered name, a ``module:function`` path, or a callable."""
    if callable(spec):
        return spec
    if spec in _NORMALIZERS:
        return _NORMALIZERS[spec]
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import normalizer {spec!r}: {exc}", field="model.normalizer"
            ) from exc
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    raise ConfigError(
        f"unknown normalizer {spec!r}; known: {', '.join(sorted(_NORMALIZERS))}, "
        "or 'module:function'",
        field="model.normalizer",
    )


# ---------------------------------------------------------------------------- labels


class LabelSet:
    """Labels, the words a model says for them, and matching of answers and tokens to them."""

    def __init__(self, labels: Sequence[str], words: dict[str, str] | None = None) -> None:
        self.labels = tuple(labels)
        words = words or {}
        self.words = tuple(words.get(lab, lab) for lab in self.labels)
        self._keys = tuple(normalize_casefold(w) or w for w in self.words)
        lookup: dict[str, int] = {}
        for i, (lab, key) in enumerate(zip(self.labels, self._keys, strict=True)):
            lookup.setdefault(key, i)
            lookup.setdefault(normalize_casefold(lab) or lab, i)
        self._lookup = lookup
        self._token_cache: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def index_of_text(self, text: str) -> int | None:
        """The label an answer names (exact after casefolding, or its leading word), or None."""
        key = normalize_casefold(text)
        if key is None:
            return None
        hit = self._lookup.get(key)
        if hit is not None:
            return hit
        # "Positive sentiment" / "positive, because ...": the answer starts with a label word
        best = None
        for cand, i in self._lookup.items():
            starts = key.startswith(cand) and not key[len(cand) : len(cand) + 1].isalnum()
            if starts and (best is None or len(cand) > len(best[0])):
                best = (cand, i)
        return None if best is None else best[1]

    def index_of_token(self, token: str) -> int:
        """The one label whose word this token begins (-1: none or ambiguous)."""
        hit = self._token_cache.get(token)
        if hit is not None:
            return hit
        key = token.strip().casefold()
        found = -1
        if key:
            matches = {
                i
                for i, w in enumerate(self._keys)
                if w.startswith(key)
                or (key.startswith(w) and not key[len(w) : len(w) + 1].isalnum())
            }
            if len(matches) == 1:
                found = matches.pop()
        self._token_cache[token] = found
        return found

    def mass(self, top: dict[str, float]) -> np.ndarray:
        """Probability mass per label from one position's ``{token: logprob}`` alternatives."""
        out = np.zeros(len(self.labels))
        for token, lp in top.items():
            i = self.index_of_token(token)
            if i >= 0 and lp is not None and math.isfinite(lp):
                out[i] += math.exp(lp)
        return out


# ---------------------------------------------------------------------------- spec


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


_DEFAULT_PROMPTS = {
    "classify": (
        "Classify the text into one of these categories: {labels}.\n"
        "Answer with the category only.\n\nText: {input}\nCategory:"
    ),
    "generate": "{input}",
}


class OpenAIChatSpec(BaseModel):
    """Parameters of an :class:`OpenAIChat` stage (the ``model:`` mapping of a cascade file)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = "openai"
    name: str | None = None
    base_url: str = "https://api.openai.com/v1"
    model: str = Field(min_length=1)
    # the NAME of the environment variable holding the key; null for servers without auth
    api_key_env: str | None = "OPENAI_API_KEY"
    endpoint: Literal["chat", "completions"] = "chat"
    mode: Literal["classify", "generate"] = "classify"
    labels: list[str] = Field(default_factory=list)
    words: dict[str, str] = Field(default_factory=dict)
    # str.format template: {input}, {labels} and any item field; literal braces as {{ }}
    prompt: str | None = None
    verify_prompt: str | None = None
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    # OpenAI's reasoning models take max_completion_tokens (chat endpoint only)
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    temperature: float = Field(default=0.0, ge=0, le=2)
    samples: int = Field(default=1, ge=1, le=64)
    sample_temperature: float = Field(default=0.7, ge=0, le=2)
    # "seed": k requests with seeds 0..k-1 (works everywhere, cached one by one);
    # "n": one request with n=k (input tokens paid once; not every server supports it)
    sample_mode: Literal["seed", "n"] = "seed"
    logprobs: bool = True
    top_logprobs: int = Field(default=10, ge=1, le=20)
    logprob_quantile: float = Field(default=0.1, gt=0, lt=1)
    normalizer: str = "casefold"
    stop: list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    prices: Prices = Field(default_factory=Prices)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    max_concurrency: int = Field(default=8, ge=1, le=1024)
    max_usd: float | None = Field(default=None, ge=0)
    # true: the run's store when the builder passes one; a path: that SQLite file; false: off
    cache: bool | str = True

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("mode") == "classify" and len(v) < 2:
            raise ValueError("classify mode needs at least two labels")
        return check_labels(v)

    @field_validator("words")
    @classmethod
    def _words(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        labels = info.data.get("labels") or []
        check_words(v, labels)
        keys = [normalize_casefold(v.get(x, x)) for x in labels]
        if None in keys or len(set(keys)) != len(keys):
            raise ValueError("label words must be distinct and non-empty (ignoring case)")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        forbidden = {"model", "messages", "prompt", "api_key"} & set(v)
        if forbidden:
            raise ValueError(f"may not set {sorted(forbidden)}")
        return v

    @property
    def stage_name(self) -> str:
        return self.name or self.model

    def default_max_tokens(self) -> int:
        return self.max_tokens or (8 if self.mode == "classify" else 256)


# ---------------------------------------------------------------------------- errors


class MalformedResponseError(Exception):
    """A response that is not the JSON an OpenAI-compatible endpoint returns."""


# ---------------------------------------------------------------------------- budget


class Budget:
    """A per-run spending cap: reserve a call's worst case first, settle to its real cost.

    Thread-safe, so one budget may be shared by stages running on different loops.
    """

    def __init__(self, max_usd: float | None) -> None:
        self.max_usd = max_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Budget(max_usd={self.max_usd}, spent_usd={self.spent_usd:.6f})"

    def reserve(self, usd: float, *, what: str = "a call") -> None:
        """Reserve ``usd`` or raise :class:`BudgetExceededError` if it could pass the cap."""
        with self._lock:
            if self.max_usd is not None and (
                self.spent_usd + self.reserved_usd + usd > self.max_usd
            ):
                raise BudgetExceededError(
                    f"{what} could cost up to ${usd:.6f}; with ${self.spent_usd:.6f} spent and "
                    f"${self.reserved_usd:.6f} in flight that may exceed the cap "
                    f"max_usd=${self.max_usd:.6f}"
                )
            self.reserved_usd += usd

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved)
            self.spent_usd += actual

    def release(self, reserved: float) -> None:
        self.settle(reserved, 0.0)


# ---------------------------------------------------------------------------- responses


@dataclass(slots=True)
class Choice:
    """One returned answer: its text, its tokens' log-probs and top alternatives."""

    text: str
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[str, float]] | None = None


def _as_float(x: Any) -> float:
    return float(x) if isinstance(x, int | float) else math.nan


def parse_response(endpoint: str, data: Any) -> tuple[list[Choice], int | None, int | None]:
    """Choices and usage (prompt, completion tokens) of a chat or completions response."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise MalformedResponseError("no 'choices' list in the response")
    if not data["choices"]:
        raise MalformedResponseError("empty 'choices' list in the response")
    choices = []
    for ch in data["choices"]:
        if not isinstance(ch, dict):
            raise MalformedResponseError("a choice is not an object")
        lp = ch.get("logprobs")
        if endpoint == "chat":
            msg = ch.get("message")
            text = msg.get("content") if isinstance(msg, dict) else None
            content = lp.get("content") if isinstance(lp, dict) else None
            entries = [e for e in content or [] if isinstance(e, dict)]
            tokens = [str(e.get("token", "")) for e in entries]
            logprobs = [_as_float(e.get("logprob")) for e in entries]
            top = None
            if entries and any("top_logprobs" in e for e in entries):
                top = [
                    {
                        str(t.get("token", "")): _as_float(t.get("logprob"))
                        for t in e.get("top_logprobs") or []
                        if isinstance(t, dict)
                    }
                    for e in entries
                ]
        else:
            text = ch.get("text")
            lp = lp if isinstance(lp, dict) else {}
            tokens = [str(t) for t in lp.get("tokens") or []]
            logprobs = [_as_float(x) for x in lp.get("token_logprobs") or []]
            raw_top = lp.get("top_logprobs")
            top = None
            if isinstance(raw_top, list):
                top = [
                    {str(k): _as_float(v) for k, v in t.items()} if isinstance(t, dict) else {}
                    for t in raw_top
                ]
        if text is not None and not isinstance(text, str):
            raise MalformedResponseError("a choice's text is not a string")
        choices.append(Choice(text or "", tokens, logprobs, top))
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    t_in, t_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        choices,
        t_in if isinstance(t_in, int) else None,
        t_out if isinstance(t_out, int) else None,
    )


def label_distribution(choice: Choice, labels: LabelSet, *, max_skip: int = 3) -> np.ndarray | None:
    """Label probability mass at the answer's first non-blank token (None without logprobs).

    The mass is *not* normalised: its sum is how much of the model's probability went to
    the label set at all.
    """
    if not choice.tokens:
        return None
    for j, tok in enumerate(choice.tokens[: max_skip + 1]):
        if not tok.strip() and j < len(choice.tokens) - 1:
            continue  # a leading space or newline token: the label comes next
        alts = dict(choice.top[j]) if choice.top is not None and j < len(choice.top) else {}
        if j < len(choice.logprobs):
            alts.setdefault(tok, choice.logprobs[j])
        return labels.mass(alts)
    return None


def _logprob_stats(logprobs: Sequence[float], q: float) -> tuple[float, float, float, float] | None:
    """Sum, mean, min and the ``q`` quantile (numpy's linear rule) of the finite log-probs.

    Plain Python: one answer has a few to a few hundred tokens, where ``np.quantile``'s
    fixed cost (~0.1 ms) is most of a call's own overhead in the gateway.
    """
    xs = sorted(x for x in logprobs if math.isfinite(x))
    if not xs:
        return None
    total = math.fsum(xs)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return total, total / len(xs), xs[0], xs[lo] + (h - lo) * (xs[hi] - xs[lo])


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

    def close(self) -> None:
        """Close every client on the loop (their async-generator closers), stop the thread."""
        if self.loop.is_closed():
            return
        if threading.current_thread() is self.thread:  # garbage-collected on the loop itself
            self.loop.call_soon(self.loop.stop)
            return
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                fut = asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop)
                fut.result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


async def _closer(client: Any) -> AsyncGenerator[None, None]:
    """Closes ``client`` when its loop shuts down its async generators.

    ``asyncio.run`` (and :meth:`_LoopThread.close`) call ``loop.shutdown_asyncgens()``
    before closing a loop: that finalises this generator, which closes the HTTP client,
    so no connection is left open whoever owns the loop and whether or not they call
    :meth:`OpenAIChat.aclose`.
    """
    try:
        yield
    finally:
        await client.close()


@dataclass
class _LoopState:
    """Per event loop: the HTTP client (its connection pool is bound to one loop)."""

    client: UpstreamClient
    semaphore: asyncio.Semaphore
    closer: AsyncGenerator[None, None]
    inflight: dict[str, asyncio.Future[_CallResult]] = field(default_factory=dict)


@dataclass(slots=True)
class _CallResult:
    choices: list[Choice]
    tokens_in: int | None
    tokens_out: int | None
    usd: float  # paid by this call now (0 for a cache hit)
    latency_ms: float  # measured now
    cached: bool
    recorded_usd: float  # what the response cost when it was paid for
    recorded_latency_ms: float


@dataclass(slots=True)
class _Request:
    item: int
    variant: int  # 0: prompt, 1: verify_prompt
    params: dict[str, Any]
    worst_usd: float


class _Fields(dict[str, Any]):
    """Template fields of one item; a missing one names the item and the field."""

    def __init__(self, item: Item, labels: str) -> None:
        super().__init__(item.fields)
        self["input"] = item.text
        self["labels"] = labels
        self["id"] = item.id
        self.item_id = item.id

    def __missing__(self, key: str) -> Any:
        raise DataError(
            f"the prompt template needs field '{key}', which item '{self.item_id}' lacks",
            field=key,
        )


# ---------------------------------------------------------------------------- the model


class OpenAIChat:
    """An OpenAI-compatible endpoint as a cascade stage (see the module docstring).

    Build from a spec or keywords: ``OpenAIChat(model="gpt-4o-mini", labels=["a", "b"])``.
    ``predict`` is the sync wrapper of ``apredict`` (it runs on a private event loop
    thread). Connections close with :meth:`close` / :meth:`aclose`, the context manager,
    the end of ``asyncio.run``, or when the model is garbage-collected.
    """

    def __init__(
        self,
        spec: OpenAIChatSpec | None = None,
        *,
        cache: ResponseCache | str | Path | bool | None = None,
        budget: Budget | None = None,
        normalizer: Normalizer | str | None = None,
        rng: random.Random | None = None,
        **params: Any,
    ) -> None:
        if isinstance(normalizer, str):  # a registered name or module:function: a spec field
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
        self.cache = ResponseCache(cache) if isinstance(cache, str | Path) else cache
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
        self._rng = rng or random.Random()
        self._base_url = spec.base_url.rstrip("/")
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._runner: _LoopThread | None = None
        self._runner_lock = threading.Lock()
        self.calls = 0  # requests sent upstream (each retry counts)
        if spec.api_key_env is not None and not os.environ.get(spec.api_key_env):
            raise ConfigError(
                f"the environment variable {spec.api_key_env!r} named by 'api_key_env' is not "
                "set (set it to the API key, or use api_key_env: null for a server without auth)",
                field="model.api_key_env",
            )

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

    def _secrets(self) -> tuple[str, ...]:
        env = self.spec.api_key_env
        key = os.environ.get(env, "") if env else ""
        return (key,) if len(key) >= 4 else ()

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            env = self.spec.api_key_env
            client = UpstreamClient(
                self._base_url,
                api_key=os.environ.get(env) if env else None,
                timeout_s=self.spec.timeout_s,
                max_connections=self.spec.max_concurrency,
            )
            closer = _closer(client)
            await anext(closer)  # started: the loop now finalises it at shutdown
            state = _LoopState(client, asyncio.Semaphore(self.spec.max_concurrency), closer)
            self._states[loop] = state
        return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.closer.aclose()

    def close(self) -> None:
        """Close the private loop's client and stop its thread (sync callers)."""
        with self._runner_lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    # ------------------------------------------------------------------ requests

    def _messages(self, template: str, item: Item) -> list[dict[str, Any]]:
        s = self.spec
        msgs: list[dict[str, Any]] = [{"role": "system", "content": s.system}] if s.system else []
        if (
            s.prompt is None
            and template == _DEFAULT_PROMPTS["generate"]
            and not isinstance(item.input, str)
        ):
            return msgs + [dict(m) for m in item.input]  # chat input, sent as given
        return [*msgs, {"role": "user", "content": self._render(template, item)}]

    def _render(self, template: str, item: Item) -> str:
        words = ", ".join(self.labels.words) if self.labels is not None else ""
        try:
            return template.format_map(_Fields(item, words))
        except (ValueError, IndexError) as exc:
            raise ConfigError(
                f"bad prompt template: {exc} (write literal braces as {{{{ and }}}})",
                field="model.prompt",
            ) from exc

    def _requests(self, items: Sequence[Item]) -> list[_Request]:
        s = self.spec
        prompts = [s.prompt or _DEFAULT_PROMPTS[s.mode]]
        if s.verify_prompt:
            prompts.append(s.verify_prompt)
        k = s.samples
        max_tokens = s.default_max_tokens()
        base: dict[str, Any] = {"model": s.model, s.max_tokens_field: max_tokens, **s.params}
        if s.stop is not None:
            base["stop"] = s.stop
        elif s.mode == "classify" and s.endpoint == "completions":
            base["stop"] = ["\n"]  # a label is one line; base models ramble on otherwise
        if s.logprobs:
            if s.endpoint == "chat":
                base["logprobs"] = True
                if s.mode == "classify":
                    base["top_logprobs"] = s.top_logprobs
            else:
                base["logprobs"] = s.top_logprobs if s.mode == "classify" else 1
        if k == 1:
            variants = [{"temperature": s.temperature}]
        elif s.sample_mode == "n":
            variants = [{"temperature": s.sample_temperature, "n": k}]
        else:
            variants = [{"temperature": s.sample_temperature, "seed": j} for j in range(k)]
        out = []
        for i, item in enumerate(items):
            caller = self._caller_params(item)
            item_max = caller.get(s.max_tokens_field, max_tokens)
            for v, template in enumerate(prompts):
                if s.endpoint == "chat":
                    body: dict[str, Any] = {"messages": self._messages(template, item)}
                    size = sum(
                        len(str(m.get("content", "")).encode()) + 8 for m in body["messages"]
                    )
                else:
                    text = self._render(template, item)
                    body = {"prompt": text}
                    size = len(text.encode()) + 8
                for extra in variants:
                    params = {**base, **body, **extra, **caller}
                    # worst case: a byte-level tokenizer never makes more tokens than bytes
                    worst = s.prices.of(size, item_max * extra.get("n", 1))
                    out.append(_Request(i, v, params, worst))
        return out

    def _caller_params(self, item: Item) -> dict[str, Any]:
        """The item's own generation parameters this stage honours (see :class:`Item`).

        Only a ``generate`` stage takes them: a classify stage's decoding is part of how it
        reads label probabilities. ``max_tokens`` is capped by the spec's ``max_tokens``
        when one is set (the operator's ceiling); ``temperature`` and ``seed`` only apply
        with ``samples: 1`` (sampled votes need their own temperature and seeds).
        """
        s = self.spec
        asked = item.params
        if s.mode != "generate" or not asked:
            return {}
        out: dict[str, Any] = {}
        if isinstance(asked.get("max_tokens"), int) and asked["max_tokens"] > 0:
            cap = s.max_tokens
            out[s.max_tokens_field] = min(asked["max_tokens"], cap) if cap else asked["max_tokens"]
        for name in ("top_p", "stop") + (("temperature", "seed") if s.samples == 1 else ()):
            if asked.get(name) is not None:
                out[name] = asked[name]
        return out

    def worst_case_cost(self, items: Sequence[Item], max_tokens: int | None = None) -> float:
        """The most answering ``items`` can cost: what the budget reserves for their calls.

        Each call's output is bounded by the item's own ``max_tokens`` (see
        :meth:`_caller_params`) or the spec's; ``max_tokens`` here is accepted for callers
        that pass their own bound, and not used.
        """
        return float(sum(r.worst_usd for r in self._requests(items)))

    async def _call(
        self, state: _LoopState, req: _Request, stop: list[BaseException]
    ) -> _CallResult:
        key = request_key(self._base_url, {"endpoint": self.spec.endpoint, **req.params})
        t0 = time.perf_counter()
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                log.debug("cache hit %s model=%s", key[:12], self.spec.model)
                choices, _, _ = parse_response(self.spec.endpoint, hit.response)
                ms = (time.perf_counter() - t0) * 1e3
                return _CallResult(
                    choices, hit.tokens_in, hit.tokens_out, 0.0, ms, True, hit.usd, hit.latency_ms
                )
        pending = state.inflight.get(key)
        if pending is not None:  # the same request is already on its way: pay once
            res = await asyncio.shield(pending)
            ms = (time.perf_counter() - t0) * 1e3
            return _CallResult(
                res.choices, res.tokens_in, res.tokens_out, 0.0, ms, True, res.usd, res.latency_ms
            )
        fut: asyncio.Future[_CallResult] = asyncio.get_running_loop().create_future()
        state.inflight[key] = fut
        try:
            res = await self._send(state, req, key, stop)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: followers re-raise it, nobody else needs to
            raise
        else:
            fut.set_result(res)
            return res
        finally:
            state.inflight.pop(key, None)

    async def _send(
        self, state: _LoopState, req: _Request, key: str, stop: list[BaseException]
    ) -> _CallResult:
        s = self.spec
        where = f"{s.model} at {self._base_url}"
        path = "/chat/completions" if s.endpoint == "chat" else "/completions"
        attempt = 0
        while True:
            reserved = 0.0
            retry_after: str | None = None
            try:
                async with state.semaphore:
                    if stop:
                        raise stop[0]
                    # reserved only while in flight, so queued calls do not hold the budget
                    self.budget.reserve(req.worst_usd, what=f"a call to {s.model}")
                    reserved = req.worst_usd
                    self.calls += 1
                    log.debug("call model=%s endpoint=%s attempt=%d", s.model, s.endpoint, attempt)
                    t0 = time.perf_counter()
                    reply = await state.client.post_json(
                        path, req.params, where=where, secrets=self._secrets()
                    )
                    latency = (time.perf_counter() - t0) * 1e3
                if reply.status >= 400:
                    retry_after = reply.retry_after
                    raise map_http_status(
                        reply.status, reply.body, where=where, secrets=self._secrets()
                    )
                try:
                    data = json.loads(reply.body)
                    choices, t_in, t_out = parse_response(s.endpoint, data)
                except (ValueError, MalformedResponseError) as exc:
                    raise UpstreamError(
                        f"{where}: malformed response: {exc}", status=reply.status, retryable=True
                    ) from exc
            except UpstreamError as err:
                self.budget.release(reserved)
                if not err.retryable or attempt >= s.max_retries:
                    if attempt:
                        again = type(err)(
                            f"{err} (after {attempt + 1} attempts)",
                            status=err.status,
                            retryable=err.retryable,
                        )
                        raise again from err.__cause__ or err
                    raise
                delay = self._backoff(attempt, retry_after)
                log.info("retrying %s in %.2fs (attempt %d): %s", s.model, delay, attempt + 1, err)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.budget.release(reserved)
                raise
            # no usage reported: charge the worst case, so the cap still holds
            usd = s.prices.of(t_in, t_out) if t_in is not None and t_out is not None else reserved
            self.budget.settle(reserved, usd)
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
            return _CallResult(choices, t_in, t_out, usd, latency, False, usd, latency)

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        s = self.spec
        cap = min(s.backoff_max_s, s.backoff_s * 2**attempt)
        delay = cap * (0.5 + 0.5 * self._rng.random())  # jitter: spread retries of many calls
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date: keep our own delay
                delay = max(delay, min(float(retry_after), s.backoff_max_s))
        return delay

    # ------------------------------------------------------------------ answering

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        """Answer ``items`` (all requests concurrently, at most ``max_concurrency`` in flight)."""
        reqs = self._requests(items)
        if not reqs:
            return self._assemble(items, reqs, [])
        state = await self._state()
        stop: list[BaseException] = []

        async def one(r: _Request) -> _CallResult:
            try:
                return await self._call(state, r, stop)
            except BaseException as exc:
                if not stop:
                    stop.append(exc)  # start no new calls: the batch fails anyway
                raise

        if len(reqs) == 1:  # one call: no task to create (a per-call overhead saved)
            return self._assemble(items, reqs, [await self._call(state, reqs[0], stop)])
        results = await asyncio.gather(*(one(r) for r in reqs), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise stop[0] if stop else res  # the first failure, not a follow-on refusal
        return self._assemble(items, reqs, results)  # type: ignore[arg-type]

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        """Sync :meth:`apredict`; works whether or not the calling thread runs a loop."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = _LoopThread()
                # closes the connections and stops the thread when the model is collected
                weakref.finalize(self, self._runner.close)
            runner = self._runner
        return runner.run(self.apredict(items))

    def _majority(self, answers: list[str | None]) -> tuple[str | None, float, int]:
        """Majority answer, its share, and the index of its first occurrence."""
        if not answers:
            return None, math.nan, -1
        winner, count = Counter(answers).most_common(1)[0]
        return winner, count / len(answers), answers.index(winner)

    def _assemble(
        self, items: Sequence[Item], reqs: list[_Request], results: list[_CallResult]
    ) -> AnswerBatch:
        s = self.spec
        n = len(items)
        n_variants = 2 if s.verify_prompt else 1
        per: list[list[list[Choice]]] = [[[] for _ in range(n_variants)] for _ in range(n)]
        cost = np.zeros(n)
        t_in = np.zeros(n)
        t_out = np.zeros(n)
        latency = np.zeros(n)
        recorded_usd = np.zeros(n)
        recorded_ms = np.zeros(n)
        cached = np.ones(n, dtype=bool)
        for r, res in zip(reqs, results, strict=True):
            i = r.item
            per[i][r.variant].extend(res.choices)
            cost[i] += res.usd
            latency[i] = max(latency[i], res.latency_ms)  # an item's calls run concurrently
            recorded_usd[i] += res.recorded_usd
            recorded_ms[i] = max(recorded_ms[i], res.recorded_latency_ms)
            cached[i] &= res.cached
            if not res.cached:
                t_in[i] += res.tokens_in or 0
                t_out[i] += res.tokens_out or 0
        labels: list[str | None] = []
        texts: list[str] = []
        samples: list[list[str]] = []
        vote = np.full(n, np.nan)
        verify = np.full(n, np.nan)
        lp_names = ("logprob", "logprob_sum", "logprob_mean", "logprob_min")
        lp = {k: np.full(n, np.nan) for k in lp_names}
        q_name = f"logprob_q{round(s.logprob_quantile * 100):02d}"
        lp_q = np.full(n, np.nan)
        label_set = self.labels
        probs = np.full((n, len(label_set)), np.nan) if label_set is not None else None
        for i in range(n):
            variant_answers = []
            for v in range(n_variants):
                choices = per[i][v]
                normed = [self._normalize(c.text) for c in choices]
                answer, share, first = self._majority(normed)
                variant_answers.append(answer)
                if v:
                    continue
                labels.append(answer)
                texts.append(choices[first].text if first >= 0 else "")
                samples.append(["" if x is None else x for x in normed])
                if s.samples > 1:
                    vote[i] = share
                if label_set is not None and probs is not None:
                    probs[i], lp["logprob"][i] = self._label_probs(choices, normed, answer)
                elif first >= 0:
                    stats = _logprob_stats(choices[first].logprobs, s.logprob_quantile)
                    if stats is not None:
                        lp["logprob_sum"][i] = lp["logprob"][i] = stats[0]
                        lp["logprob_mean"][i], lp["logprob_min"][i], lp_q[i] = stats[1:]
            if n_variants == 2:
                a, b = variant_answers
                verify[i] = float(a is not None and a == b)
        signals: dict[str, np.ndarray] = {}
        if label_set is not None:
            signals["logprob"] = lp["logprob"]
        else:
            signals.update(lp)
            signals[q_name] = lp_q
        if s.samples > 1:
            signals["vote"] = vote
        if n_variants == 2:
            signals["verify"] = verify
        if probs is not None and np.isnan(probs).all():
            probs = None  # no logprobs and no samples: no probabilities to give
        elif probs is not None:
            probs = np.where(np.isnan(probs), 1.0 / probs.shape[1], probs)
        return AnswerBatch(
            labels=labels,
            cost=cost,
            latency_ms=latency,
            signals=signals,
            probs=probs,
            classes=label_set.labels if probs is not None and label_set is not None else None,
            samples=samples if s.samples > 1 or n_variants == 2 else None,
            tokens_in=t_in,
            tokens_out=t_out,
            extra={
                "text": texts,
                "cached": cached.tolist(),
                "recorded_usd": recorded_usd.tolist(),
                "recorded_latency_ms": recorded_ms.tolist(),
            },
        )

    def _normalize(self, text: str) -> str | None:
        if self.labels is not None:
            i = self.labels.index_of_text(text)
            return None if i is None else self.labels.labels[i]
        return self.normalize(text)

    def _label_probs(
        self, choices: list[Choice], normed: list[str | None], answer: str | None
    ) -> tuple[np.ndarray, float]:
        """Probabilities over the labels and log p(answer) for one item."""
        assert self.labels is not None
        m = len(self.labels)
        masses = [d for d in (label_distribution(c, self.labels) for c in choices) if d is not None]
        masses = [d for d in masses if d.sum() > 0]
        k = self.labels.labels.index(answer) if answer is not None else -1
        if masses:
            mass = masses[0] if len(masses) == 1 else np.mean(masses, axis=0)
            p = mass / mass.sum()
            # min(): a server listing one token twice must not make a probability above 1
            logprob = math.log(min(mass[k], 1.0)) if k >= 0 and mass[k] > 0 else -math.inf
            return p, (logprob if k >= 0 else math.nan)
        if self.spec.samples > 1:
            counts = np.array([normed.count(lab) for lab in self.labels.labels], dtype=float)
            p = counts / counts.sum() if counts.sum() else np.full(m, 1.0 / m)
            return p, (math.log(p[k]) if k >= 0 and p[k] > 0 else math.nan)
        return np.full(m, np.nan), math.nan


# ---------------------------------------------------------------------------- building


def _resolve_cache(spec: OpenAIChatSpec, ctx: BuildContext) -> ResponseCache | None:
    if spec.cache is False:
        return None
    if spec.cache is True:
        given = ctx.resources.get("response_cache")
        if isinstance(given, ResponseCache):
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

    ``ctx.resources`` may hold ``response_cache`` (a :class:`ResponseCache`), ``store_path``
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


__all__ = [
    "Budget",
    "Choice",
    "LabelSet",
    "MalformedResponseError",
    "Normalizer",
    "OpenAIChat",
    "OpenAIChatSpec",
    "Prices",
    "build_openai_chat",
    "label_distribution",
    "normalize_casefold",
    "normalize_choice",
    "normalize_exact",
    "normalize_number",
    "parse_response",
    "register_normalizer",
    "resolve_normalizer",
]
