"""What an OpenAI-compatible stage sends: its spec, prompts and request bodies.

:class:`OpenAIChatSpec` is the ``model:`` mapping of a cascade file; :func:`build_requests`
turns items into request bodies, one per item, prompt variant and sample, each with the
worst case it can cost (input bytes as tokens, its ``max_tokens`` out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tiered.core.items import Item
from tiered.errors import ConfigError, DataError
from tiered.models._params import check_labels, check_words
from tiered.models.llm.labels import LabelSet, check_label_words, resolve_normalizer
from tiered.models.llm.pricing import Prices, input_token_bound
from tiered.models.llm.tools import TOOL_PARAMS, tools_token_bound
from tiered.models.llm.transport import DEFAULT_MAX_RESPONSE_BYTES

DEFAULT_PROMPTS = {
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
    # a bigger response is refused (read in chunks: memory stays bounded)
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    max_usd: float | None = Field(default=None, ge=0)
    # true: the run's store when the builder passes one; a path: that SQLite file; false: off
    cache: bool | str = True
    # forward a request's tools / tool_choice / parallel_tool_calls and answer with tool
    # calls (mode generate, endpoint chat): the gateway sends requests with tools here
    tools: bool = False

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
        check_label_words(v, labels)
        return v

    @field_validator("normalizer")
    @classmethod
    def _normalizer(cls, v: str) -> str:
        resolve_normalizer(v)  # a registered name only: never an importable path
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        # stream: the stage reads one JSON response, never an event stream
        forbidden = {"model", "messages", "prompt", "api_key", "stream"} & set(v)
        if forbidden:
            raise ValueError(f"may not set {sorted(forbidden)}")
        return v

    @model_validator(mode="after")
    def _tools_need_chat(self) -> OpenAIChatSpec:
        if self.tools and (self.mode != "generate" or self.endpoint != "chat"):
            raise ValueError("tools: true needs mode: generate and endpoint: chat")
        return self

    @property
    def stage_name(self) -> str:
        return self.name or self.model

    def default_max_tokens(self) -> int:
        return self.max_tokens or (8 if self.mode == "classify" else 256)


@dataclass(slots=True)
class LLMRequest:
    """One request body for one item, prompt variant and sample, and its worst-case cost."""

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


def render(template: str, item: Item, labels: LabelSet | None) -> str:
    """``template`` filled with the item's fields, ``{input}`` and ``{labels}``."""
    words = ", ".join(labels.words) if labels is not None else ""
    try:
        return template.format_map(_Fields(item, words))
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"bad prompt template: {exc} (write literal braces as {{{{ and }}}})",
            field="model.prompt",
        ) from exc


def messages(
    spec: OpenAIChatSpec, template: str, item: Item, labels: LabelSet | None
) -> list[dict[str, Any]]:
    """The chat messages for one item: the system prompt, then the rendered template (a
    chat input without a template of its own is sent as given)."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": spec.system}] if spec.system else []
    if (
        spec.prompt is None
        and template == DEFAULT_PROMPTS["generate"]
        and not isinstance(item.input, str)
    ):
        return msgs + [dict(m) for m in item.input]
    return [*msgs, {"role": "user", "content": render(template, item, labels)}]


def caller_params(spec: OpenAIChatSpec, item: Item) -> dict[str, Any]:
    """The item's own generation parameters the stage honours (see :class:`Item`).

    Only a ``generate`` stage takes them: a classify stage's decoding is part of how it
    reads label probabilities. ``max_tokens`` is capped by the spec's ``max_tokens``
    when one is set (the operator's ceiling); ``temperature`` and ``seed`` only apply
    with ``samples: 1`` (sampled votes need their own temperature and seeds).
    """
    asked = item.params
    if spec.mode != "generate" or not asked:
        return {}
    out: dict[str, Any] = {}
    if isinstance(asked.get("max_tokens"), int) and asked["max_tokens"] > 0:
        cap = spec.max_tokens
        out[spec.max_tokens_field] = min(asked["max_tokens"], cap) if cap else asked["max_tokens"]
    for name in ("top_p", "stop") + (("temperature", "seed") if spec.samples == 1 else ()):
        if asked.get(name) is not None:
            out[name] = asked[name]
    if spec.tools:
        for name in TOOL_PARAMS:
            if asked.get(name) is not None:
                out[name] = asked[name]
    return out


def _base_params(s: OpenAIChatSpec) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": s.model,
        s.max_tokens_field: s.default_max_tokens(),
        **s.params,
    }
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
    return base


def build_requests(
    spec: OpenAIChatSpec, labels: LabelSet | None, items: Sequence[Item]
) -> list[LLMRequest]:
    """Every request answering ``items`` takes, with its worst-case cost."""
    s = spec
    prompts = [s.prompt or DEFAULT_PROMPTS[s.mode]]
    if s.verify_prompt:
        prompts.append(s.verify_prompt)
    k = s.samples
    max_tokens = s.default_max_tokens()
    base = _base_params(s)
    if k == 1:
        variants: list[dict[str, Any]] = [{"temperature": s.temperature}]
    elif s.sample_mode == "n":
        variants = [{"temperature": s.sample_temperature, "n": k}]
    else:
        variants = [{"temperature": s.sample_temperature, "seed": j} for j in range(k)]
    out = []
    for i, item in enumerate(items):
        caller = caller_params(s, item)
        item_max = caller.get(s.max_tokens_field, max_tokens)
        for v, template in enumerate(prompts):
            if s.endpoint == "chat":
                msgs = messages(s, template, item, labels)
                body: dict[str, Any] = {"messages": msgs}
                size = input_token_bound(msgs) + tools_token_bound(caller)
            else:
                text = render(template, item, labels)
                body = {"prompt": text}
                size = input_token_bound(text)
            for extra in variants:
                params = {**base, **body, **extra, **caller}
                worst = s.prices.of(size, item_max * extra.get("n", 1))
                out.append(LLMRequest(i, v, params, worst))
    return out


__all__ = [
    "DEFAULT_PROMPTS",
    "LLMRequest",
    "OpenAIChatSpec",
    "build_requests",
    "caller_params",
    "messages",
    "render",
]
