"""Wire schemas of the gateway: the OpenAI API subset we serve, plus ``/v1/classify``.

Requests accept (and ignore) OpenAI fields we have no use for, so that existing clients
keep working; fields whose meaning we cannot honour (``n > 1``, legacy ``functions``,
logprobs, a JSON response format) are rejected with a 400 naming the parameter rather
than silently dropped. ``tools`` go to the stages that take them; the answer's
``tool_calls`` are OpenAI's, streamed as OpenAI streams them. Responses carry exactly
the OpenAI fields, plus one extra object ``tiered`` with the cascade's trace; the official
``openai`` client keeps unknown fields, so ``completion.tiered`` (or
``completion.model_extra["tiered"]``) reads it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

# --------------------------------------------------------------------------- errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {"message", "type", "param", "code"}}``, as OpenAI sends it."""

    error: ErrorInfo


# --------------------------------------------------------------------------- trace


class StageTrace(BaseModel):
    """What one stage did for one request."""

    stage: str
    accepted: bool
    cost_usd: float
    latency_ms: float
    signals: dict[str, float] = Field(default_factory=dict)
    # "UpstreamTimeoutError: ..." when the stage failed and passed the request on
    error: str | None = None


class TieredTrace(BaseModel):
    """The extra ``tiered`` field: who answered, how sure, at what cost."""

    cascade: str
    stage: str
    stage_index: int
    confidence: float | None = None
    cost_usd: float
    latency_ms: float
    trace: list[StageTrace]
    request_id: str


# --------------------------------------------------------------------------- usage


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


# --------------------------------------------------------------------------- chat


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


# --------------------------------------------------------------------------- tools


class FunctionCall(BaseModel):
    """A call's function: its name and its arguments as a JSON string."""

    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str


class ToolCall(BaseModel):
    """One tool call of an assistant message, as OpenAI sends it."""

    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(BaseModel):
    # kept as sent (description, strict, ...): forwarded to the stages untouched
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    parameters: dict[str, Any] | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function to call."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # image/audio parts fail validation here: a 400 naming the message, not a silent drop
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    # an assistant turn that called tools, and a tool's answer to one call
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def as_input(self) -> dict[str, Any]:
        """The message as a stage sees it (tool fields only where the client sent them)."""
        m: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.tool_calls:
            m["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            m["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role in ("tool", "function"):
            m["name"] = self.name
        return m

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class SamplingFields(BaseModel):
    """Generation parameters shared by chat and completions; passed to the stages."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    # some clients send explicit nulls for defaults: accepted as the default
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def params(self) -> dict[str, Any]:
        """The generation parameters a stage may honour (only those the client set)."""
        out: dict[str, Any] = {}
        for name in ("max_tokens", "temperature", "top_p", "stop", "seed"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        out = super().params()
        if self.max_completion_tokens is not None and "max_tokens" not in out:
            out["max_tokens"] = self.max_completion_tokens
        if self.tools:
            # as the client sent them: the stages forward them upstream
            out["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
            if self.tool_choice is not None:
                c = self.tool_choice
                out["tool_choice"] = c if isinstance(c, str) else c.model_dump()
            if self.parallel_tool_calls is not None:
                out["parallel_tool_calls"] = self.parallel_tool_calls
        return out


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    # absent unless the answer calls tools (as OpenAI sends it)
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda v: v is None)


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "tool_calls"] = "stop"


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    tiered: TieredTrace


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of a streamed tool call: id, type and name first, then argument pieces."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None

    @field_serializer("delta")
    def _sparse_delta(self, delta: DeltaMessage) -> dict[str, Any]:
        # OpenAI sends only the fields a delta changes
        return delta.model_dump(exclude_none=True)


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
    tiered: TieredTrace | None = None


# --------------------------------------------------------------------------- completions


class CompletionRequest(SamplingFields):
    # a string or a batch of strings (token-id prompts are not supported)
    prompt: str | list[str]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] = "stop"


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    # one trace per prompt, in prompt order
    tiered: list[TieredTrace]


class CompletionStreamChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: UsageInfo | None = None
    tiered: list[TieredTrace] | None = None


# --------------------------------------------------------------------------- models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tiered"
    # extra: what the cascade does
    task: Literal["chat", "classify"]
    stages: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------- classify


class ClassifyRequest(BaseModel):
    """``{"model": "sentiment", "input": "text" | ["text", ...]}``."""

    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str]
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Classification(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    label: str | None
    stage: str
    stage_index: int
    # the answering stage's main confidence signal (the one its rule reads, else max_prob)
    confidence: float | None
    signals: dict[str, float]
    cost_usd: float
    latency_ms: float
    # online cascades: the expert's answer was used to teach the cheaper stages
    learned: bool = False
    error: str | None = None


class ClassifyUsage(BaseModel):
    texts: int
    cost_usd: float


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[Classification]
    usage: ClassifyUsage


# --------------------------------------------------------------------------- health


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]
    in_flight: int
    max_in_flight: int
    # llama.cpp servers the gateway started: name -> base URL (loopback)
    local_servers: dict[str, str] = Field(default_factory=dict)


__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamChoice",
    "ChatCompletionStreamResponse",
    "ChatMessage",
    "Classification",
    "ClassifyRequest",
    "ClassifyResponse",
    "ClassifyUsage",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionStreamChoice",
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "ErrorInfo",
    "ErrorResponse",
    "FunctionCall",
    "FunctionDefinition",
    "HealthResponse",
    "ModelCard",
    "ModelList",
    "NamedFunction",
    "NamedToolChoice",
    "SamplingFields",
    "StageTrace",
    "StreamOptions",
    "TextContentPart",
    "TieredTrace",
    "ToolCall",
    "ToolChoice",
    "ToolDefinition",
    "UsageInfo",
]
