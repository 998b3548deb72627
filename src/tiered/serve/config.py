"""Gateway files: which cascades to serve, under which limits, keys and budgets.

```yaml
server:                       # all optional; defaults shown
  deadline_s: 30              # no client waits longer than this for an answer
  max_in_flight: 256          # more concurrent requests get 429 + Retry-After
  retry_after_s: 1
  max_body_bytes: 1048576     # larger bodies get 413
  header_timeout_s: 10        # a connection must send its request headers within this
  body_timeout_s: 10          # ... and its body within this once the headers are in (408)
  max_message_chars: 100000   # per message / prompt / text (413)
  max_messages: 256           # per chat request (413)
  max_batch: 256              # texts per /v1/classify, prompts per /v1/completions (413)
  stream_keepalive_s: 10      # a stream still waiting for its answer sends SSE comments
  stream_chunk_chars: 64      # the final text is streamed in pieces of about this size
  store: gateway.db           # SQLite: per-key spend and online-learning state
  response_cache: false       # true: LLM stages cache responses in the store (or shared)
  shared: redis://redis:6379/0  # replicas: spend, cache, online state in Redis (not store)
  tracing:                    # OpenTelemetry spans (the otel extra); none when unset
    otlp_endpoint: http://127.0.0.1:4318   # an OTLP/HTTP collector
auth:
  keys_file: keys.txt         # one key per line: "name: secret" or just "secret"
  keys_env: TIERED_GATEWAY_KEYS   # same entries, comma-separated
budgets:
  default_usd: 5.0            # per key (per gateway when there are no keys); null = none
  per_key: {alice: 20.0}
servers:                      # llama.cpp servers the gateway starts (and stops) itself
  gemma: {n_threads: 2}       # Gemma 3 270M from its PyPI package unless model_path is set
cascades:
  - name: support-bot         # the model name clients send
    task: chat                # chat: the answering stage's text; classify: labels
    on_error: defer           # default for stages that set no on_error
    reserve_usd: 0.002        # worst-case USD per request, reserved against the budget
    tools: {accept: tool_call_or_rule}  # requests with tools: the stages that take them
    stages: [...]             # as in a cascade file (tiered.core.spec.StageSpec)
```

A stage reaches a local server with ``base_url: server:gemma`` and ``model: local-gguf``.

``tiered serve`` takes several files: each is a gateway file like the above or a plain
cascade file (``name`` + ``stages``), served as a chat cascade unless it says
``task: classify``. At most one file may set each of ``server``, ``auth``, ``budgets``.
Relative paths resolve against the file that names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from tiered.config import load_yaml, validate_yaml
from tiered.core.limits import MAX_NAME_CHARS, MAX_STAGES, Name
from tiered.core.spec import StageSpec
from tiered.errors import ConfigError


class TracingSettings(BaseModel):
    """OpenTelemetry spans, one per request and one per stage run, sent over OTLP/HTTP."""

    model_config = ConfigDict(extra="forbid")
    # the collector's OTLP/HTTP address; /v1/traces is added unless the path names it
    otlp_endpoint: str = Field(min_length=1)
    service_name: str = Field(default="tiered-gateway", min_length=1)  # names the spans' source
    # sent with every export (a hosted backend's key: prefer the standard
    # OTEL_EXPORTER_OTLP_HEADERS variable, which keeps it out of the file)
    headers: dict[str, str] = Field(default_factory=dict)
    # share of requests traced (a client's sampled traceparent is always followed)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deadline_s: float = Field(default=30.0, gt=0)
    max_in_flight: int = Field(default=256, ge=1)
    retry_after_s: int = Field(default=1, ge=0)  # the Retry-After of a 429, in seconds
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # slow or stalled clients: every wait for a client has a bound
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_message_chars: int = Field(default=100_000, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_batch: int = Field(default=256, ge=1)
    stream_keepalive_s: float = Field(default=10.0, gt=0)
    stream_chunk_chars: int = Field(default=64, ge=1)
    store: str | None = None
    # cache LLM stages' responses in the store (same request, same parameters: paid once);
    # off by default: chat clients that sample expect a fresh answer each time
    response_cache: bool = False
    # OpenTelemetry (the otel extra); None: no spans, nothing imported, no cost
    tracing: TracingSettings | None = None
    # redis://HOST:PORT/DB: several gateway processes as one service (budgets, response
    # cache and online learned state in that Redis; tiered.store.redis_shared)
    shared: str | None = None

    @field_validator("shared")
    @classmethod
    def _shared_url(cls, value: str | None) -> str | None:
        if value is not None:
            from tiered.store.redis_shared import parse_shared_url

            try:
                parse_shared_url(value)
            except ConfigError as exc:
                raise ValueError(exc.reason) from None
        return value

    @model_validator(mode="after")
    def _one_home_for_state(self) -> ServerSettings:
        if self.shared is not None and self.store is not None:
            raise ValueError(
                "set either 'store' (one gateway process: state in SQLite) or 'shared' "
                "(replicas: spend, cache and learned state in Redis), not both"
            )
        return self


class AuthSettings(BaseModel):
    """API keys: without any, the gateway serves every client."""

    model_config = ConfigDict(extra="forbid")
    keys_file: str | None = None
    keys_env: str | None = None
    # /metrics needs a key too (it shows model names and spend)
    protect_metrics: bool = False


class BudgetSettings(BaseModel):
    """Spending limits in USD: a request that could exceed its key's budget gets 429."""

    model_config = ConfigDict(extra="forbid")
    default_usd: float | None = Field(default=None, ge=0)
    per_key: dict[Name, float] = Field(default_factory=dict)  # key name -> its own budget

    @model_validator(mode="after")
    def _non_negative(self) -> BudgetSettings:
        bad = sorted(k for k, v in self.per_key.items() if v < 0)
        if bad:
            raise ValueError(f"budgets must be >= 0; negative for keys {bad}")
        return self


class LocalServerSettings(BaseModel):
    """A ``llama_cpp.server`` the gateway starts on loopback and stops with itself.

    Stages point at it with ``base_url: server:NAME`` (replaced by its URL) and
    ``model: local-gguf`` (its ``model_alias``).
    """

    model_config = ConfigDict(extra="forbid")
    model_path: str | None = None  # default: Gemma 3 270M from its PyPI package
    model_alias: Name = "local-gguf"  # the model name stages send
    n_ctx: int = Field(default=2048, ge=128)  # context length in tokens
    n_threads: int = Field(default=2, ge=1)  # CPU threads of the server
    extra_args: list[str] = Field(default_factory=list)  # more llama_cpp.server arguments
    startup_timeout_s: float = Field(default=180.0, gt=0)  # wait this long for it to answer

    @field_validator("extra_args")
    @classmethod
    def _stays_on_loopback(cls, args: list[str]) -> list[str]:
        # the gateway binds its servers to 127.0.0.1 at a port it picks: an argument that moves
        # them would expose an unauthenticated model server, or point stages at another one
        owned = [a for a in args if a.split("=", 1)[0] in _OWNED_SERVER_ARGS]
        if owned:
            raise ValueError(
                f"must not set {', '.join(owned)}: the gateway binds its local servers to "
                "127.0.0.1 at a free port itself"
            )
        return args


_OWNED_SERVER_ARGS = frozenset({"--host", "--port", "--model", "--model_alias", "--model-alias"})


SERVER_REF = "server:"


def server_refs(value: Any) -> list[str]:
    """Names of the local servers a model spec refers to (``"server:NAME"`` strings)."""
    if isinstance(value, str):
        return [value.removeprefix(SERVER_REF)] if value.startswith(SERVER_REF) else []
    if isinstance(value, dict):
        return [name for v in value.values() for name in server_refs(v)]
    if isinstance(value, list):
        return [name for v in value for name in server_refs(v)]
    return []


def resolve_server_refs(value: Any, urls: dict[str, str]) -> Any:
    """``value`` with every ``"server:NAME"`` string replaced by that server's URL."""
    if isinstance(value, str) and value.startswith(SERVER_REF):
        return urls[value.removeprefix(SERVER_REF)]
    if isinstance(value, dict):
        return {k: resolve_server_refs(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_server_refs(v, urls) for v in value]
    return value


class OnlineSettings(BaseModel):
    """Online learning of a classify cascade: its cheap stages learn from its last stage.

    Every key but ``enabled`` and ``checkpoint_every_items`` is a setting of
    :class:`tiered.online.OnlineConfig` (``target_agreement``, ``warmup``, ...).
    """

    model_config = ConfigDict(extra="allow")
    enabled: bool = True  # false: keep the section, learn nothing
    # write the learned state to the store after this many newly processed items
    checkpoint_every_items: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _online_config(self) -> OnlineSettings:
        from tiered.online.config import OnlineConfig

        OnlineConfig.model_validate(self.model_extra or {})
        return self

    def online_config(self) -> Any:
        from tiered.online.config import OnlineConfig

        return OnlineConfig.model_validate(self.model_extra or {})


class ToolSettings(BaseModel):
    """How a chat cascade serves requests that carry ``tools``.

    Such requests run through the stages whose model takes tools (an ``openai`` model
    with ``tools: true``), or the ones named in ``stages``, in cascade order; the last of
    them answers whatever reaches it. An earlier one's answer is accepted when it is a
    well-formed tool call or its own rule accepts it (``tool_call_or_rule``), only when it
    is a well-formed tool call (``tool_call``), or only when its rule accepts it
    (``rule``); a malformed call is never accepted.
    """

    model_config = ConfigDict(extra="forbid")
    stages: list[Name] | None = Field(default=None, min_length=1)  # default: those taking tools
    # when an earlier stage's answer to a request with tools is accepted (see above)
    accept: Literal["tool_call_or_rule", "tool_call", "rule"] = "tool_call_or_rule"


class CascadeEntry(BaseModel):
    """One served cascade: a model name in ``/v1/models``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
    )
    task: Literal["chat", "classify"] = "chat"
    labels: list[Name] | None = None  # classify: the label set, for readers (models set their own)
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES)
    on_error: Literal["raise", "defer"] | None = None
    deadline_s: float | None = Field(default=None, gt=0)  # default: server.deadline_s
    reserve_usd: float | None = Field(default=None, ge=0)
    # used for the worst-case cost of token-priced stages when the client sets none
    max_tokens: int = Field(default=256, ge=1)
    online: OnlineSettings | None = None
    tools: ToolSettings | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)  # free-form, for people
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    # where it was read from, for errors found when it is built: file, and field prefix
    _source: Path | None = PrivateAttr(default=None)
    _prefix: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _task_fields(self) -> CascadeEntry:
        if self.online is not None and self.task != "classify":
            raise ValueError("online learning is for classify cascades; set task: classify")
        if self.tools is not None and self.task != "chat":
            raise ValueError("tools are for chat cascades; remove 'tools' or set task: chat")
        names = [s.name for s in self.stages]
        unknown = [n for n in (self.tools.stages or []) if n not in names] if self.tools else []
        if unknown:
            raise ValueError(f"tools.stages names unknown stages {unknown}; stages: {names}")
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def located(self, exc: ConfigError) -> ConfigError:
        """``exc`` (raised building this cascade) naming the file and field it came from."""
        field = f"{self._prefix}{exc.field}" if exc.field else self._prefix.rstrip(".") or None
        reason = f"cascade '{self.name}': {exc.reason}"
        return ConfigError(reason, path=exc.path or self._source, line=exc.line, field=field)

    def stage_specs(self) -> list[StageSpec]:
        """Stages with the cascade's ``on_error`` filled in where a stage sets none."""
        if self.on_error is None:
            return list(self.stages)
        return [
            s
            if "on_error" in s.model_fields_set
            else s.model_copy(update={"on_error": self.on_error})
            for s in self.stages
        ]


class GatewayFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: ServerSettings | None = None
    auth: AuthSettings | None = None
    budgets: BudgetSettings | None = None
    servers: dict[Name, LocalServerSettings] = Field(default_factory=dict)
    cascades: list[CascadeEntry] = Field(default_factory=list)


class GatewayConfig(BaseModel):
    """Everything ``tiered serve`` was given, merged from one or more files."""

    model_config = ConfigDict(extra="forbid")
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    servers: dict[str, LocalServerSettings] = Field(default_factory=dict)
    cascades: list[CascadeEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_servers(self) -> GatewayConfig:
        for i, c in enumerate(self.cascades):
            for j, st in enumerate(c.stages):
                unknown = sorted(set(server_refs(st.model)) - set(self.servers))
                if unknown:
                    known = ", ".join(sorted(self.servers)) or "none"
                    raise ConfigError(
                        f"cascade '{c.name}' stage '{st.name}' refers to local server(s) "
                        f"{unknown}, which no 'servers' section defines (defined: {known})",
                        field=f"cascades.{i}.stages.{j}.model",
                    )
        return self

    def cascade(self, name: str) -> CascadeEntry:
        for c in self.cascades:
            if c.name == name:
                return c
        raise KeyError(name)


def _load_one(path: Path) -> GatewayFile:
    data, node = load_yaml(path)  # parsed once, validated as either kind of file
    base = path.resolve().parent
    if isinstance(data, dict) and "stages" in data:
        entry = validate_yaml(data, node, path, CascadeEntry)
        entry._base_dir, entry._source = base, path
        return GatewayFile(cascades=[entry])
    gw = validate_yaml(data, node, path, GatewayFile)
    if not gw.cascades:
        raise ConfigError("a gateway file needs at least one cascade", path=path, field="cascades")
    for i, c in enumerate(gw.cascades):
        c._base_dir, c._source, c._prefix = base, path, f"cascades.{i}."
    return gw


def _absolute_paths(section: BaseModel, base: Path) -> BaseModel:
    """The section with its file paths made absolute (``~`` expanded; relative paths are
    relative to the file naming them)."""
    update = {}
    for name in ("store", "keys_file", "model_path"):
        value = getattr(section, name, None)
        if value is None or value == ":memory:":
            continue
        path = Path(value).expanduser()
        update[name] = str(path if path.is_absolute() else base / path)
    return section.model_copy(update=update) if update else section


def load_gateway_config(paths: Sequence[str | Path] | str | Path) -> GatewayConfig:
    """Read and merge gateway/cascade files; errors name file, line and field."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ConfigError("give at least one gateway or cascade file")
    sections: dict[str, tuple[Any, Path]] = {}
    cascades: list[CascadeEntry] = []
    seen: dict[str, Path] = {}
    servers: dict[str, LocalServerSettings] = {}
    for raw in paths:
        path = Path(raw)
        gw = _load_one(path)
        for name, srv in gw.servers.items():
            if name in servers:
                raise ConfigError(
                    f"local server '{name}' is defined twice", path=path, field=f"servers.{name}"
                )
            servers[name] = _absolute_paths(srv, path.resolve().parent)  # type: ignore[assignment]
        for name in ("server", "auth", "budgets"):
            value = getattr(gw, name)
            if value is None:
                continue
            if name in sections:
                raise ConfigError(
                    f"'{name}' is already set by {sections[name][1]}; set it in one file only",
                    path=path,
                    field=name,
                )
            sections[name] = (_absolute_paths(value, path.resolve().parent), path)
        for c in gw.cascades:
            if c.name in seen:
                raise ConfigError(
                    f"cascade name '{c.name}' is already served from {seen[c.name]}",
                    path=path,
                    field="cascades.name",
                )
            seen[c.name] = path
            cascades.append(c)
    try:
        return GatewayConfig(
            cascades=cascades,
            servers=servers,
            **{name: v for name, (v, _) in sections.items()},
        )
    except ConfigError as exc:
        # a cross-file check: name the file that holds the offending cascade
        where = None
        if exc.field and exc.field.startswith("cascades."):
            where = seen.get(cascades[int(exc.field.split(".")[1])].name)
        raise ConfigError(exc.reason, path=where, field=exc.field) from exc


__all__ = [
    "AuthSettings",
    "BudgetSettings",
    "CascadeEntry",
    "GatewayConfig",
    "GatewayFile",
    "LocalServerSettings",
    "OnlineSettings",
    "ServerSettings",
    "ToolSettings",
    "TracingSettings",
    "load_gateway_config",
    "resolve_server_refs",
    "server_refs",
]
