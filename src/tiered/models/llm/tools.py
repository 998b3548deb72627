"""Tool (function) calls: what a stage forwards, how its answer is read and judged.

A chat request may carry OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls``
(the gateway puts them in ``Item.params``). A model that takes them says so with
``supports_tools = True`` (an ``openai`` stage with ``tools: true``); its answers carry
the tool calls it made in ``AnswerBatch.extra["tool_calls"]`` (OpenAI's shape: ``id``,
``type``, ``function: {name, arguments}``; None for a text answer) and the signal
``tool_call``:

- 1.0: every call names a declared function, its ``arguments`` are a JSON object with
  the function's required parameters (and no others when the schema forbids them), and
  ``tool_choice`` is respected;
- 0.0: a call that is not, or a text answer where ``tool_choice`` demands a call;
- NaN: a text answer where text is allowed (no signal to read).

``{kind: threshold, signal: tool_call, threshold: 1}`` therefore accepts a well-formed
tool call and passes everything else on.

An answer's label is its text (normalised) or, for a tool call, a canonical key of the
calls (names and parsed arguments, ids left out), so that k sampled answers vote on
which call to make.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# the request fields a tool-taking stage forwards upstream
TOOL_PARAMS = ("tools", "tool_choice", "parallel_tool_calls")
TOOL_CALL_SIGNAL = "tool_call"
_KEY_PREFIX = "tool_calls:"


class MalformedToolCallError(ValueError):
    """A ``tool_calls`` entry without the structure OpenAI's API gives it."""


@runtime_checkable
class ToolCallingModel(Protocol):
    """A model that may forward a request's tools; ``supports_tools`` says whether it does."""

    supports_tools: bool


def supports_tools(model: object) -> bool:
    """Whether ``model`` forwards a request's tools and answers with tool calls."""
    return isinstance(model, ToolCallingModel) and bool(model.supports_tools)


def wants_tools(params: Mapping[str, Any]) -> bool:
    """Whether an item's parameters ask for tools."""
    return bool(params.get("tools"))


def read_tool_calls(raw: Any) -> list[dict[str, Any]] | None:
    """A response message's ``tool_calls`` in OpenAI's shape; None when there are none.

    Arguments given as an object (some servers do) are written as a JSON string; a
    missing id gets a fresh ``call_...`` one. The structure must hold (a list of objects
    with a ``function`` holding a string ``name``): :class:`MalformedToolCallError` if not.
    """
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise MalformedToolCallError("'tool_calls' is not a list")
    calls = []
    for entry in raw:
        fn = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise MalformedToolCallError("a tool call has no function name")
        args = fn.get("arguments", "")
        if not isinstance(args, str):
            args = json.dumps(args)
        call_id = entry.get("id")
        calls.append(
            {
                "id": call_id if isinstance(call_id, str) and call_id else new_call_id(),
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return calls


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def tool_call_key(calls: Sequence[Mapping[str, Any]]) -> str:
    """A canonical label for ``calls``: equal for the same functions and arguments."""
    parts = []
    for c in calls:
        fn = c["function"]
        try:
            args: Any = json.loads(fn["arguments"])
        except ValueError:
            args = fn["arguments"]
        parts.append([fn["name"], args])
    return _KEY_PREFIX + json.dumps(parts, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """What a request declared: its functions' parameter schemas and ``tool_choice``."""

    schemas: dict[str, Mapping[str, Any]]
    choice: Any = None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> ToolRequest | None:
        tools = params.get("tools")
        if not tools:
            return None
        schemas: dict[str, Mapping[str, Any]] = {}
        for t in tools:
            fn = t.get("function") if isinstance(t, Mapping) else None
            if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
                schema = fn.get("parameters")
                schemas[fn["name"]] = schema if isinstance(schema, Mapping) else {}
        return cls(schemas, params.get("tool_choice"))

    @property
    def forced(self) -> str | None:
        """The function ``tool_choice`` names, if it names one."""
        c = self.choice
        if isinstance(c, Mapping) and isinstance(c.get("function"), Mapping):
            name = c["function"].get("name")
            return name if isinstance(name, str) else None
        return None

    @property
    def call_required(self) -> bool:
        return self.choice == "required" or self.forced is not None

    def well_formed(self, calls: Sequence[Mapping[str, Any]]) -> bool:
        """Every call names a declared (or the forced) function with valid arguments."""
        if not calls or self.choice == "none":
            return False
        forced = self.forced
        for c in calls:
            fn = c["function"]
            name = fn["name"]
            if name not in self.schemas or (forced is not None and name != forced):
                return False
            try:
                args = json.loads(fn["arguments"] or "{}")
            except ValueError:
                return False
            if not isinstance(args, dict) or not _fits(args, self.schemas[name]):
                return False
        return True

    def signal(self, calls: Sequence[Mapping[str, Any]] | None) -> float:
        """The ``tool_call`` signal of one answer (see the module docstring)."""
        if calls:
            return 1.0 if self.well_formed(calls) else 0.0
        return 0.0 if self.call_required else math.nan


def _fits(args: Mapping[str, Any], schema: Mapping[str, Any]) -> bool:
    """Required parameters present; no unknown ones where the schema forbids them."""
    required = schema.get("required")
    if isinstance(required, list) and any(r not in args for r in required):
        return False
    props = schema.get("properties")
    if schema.get("additionalProperties") is False and isinstance(props, Mapping):
        return all(k in props for k in args)
    return True


def tools_token_bound(params: Mapping[str, Any]) -> int:
    """Most input tokens the declared tools add to a request (their JSON's UTF-8 bytes)."""
    tools = params.get("tools")
    return len(json.dumps(tools).encode()) if tools else 0


__all__ = [
    "TOOL_CALL_SIGNAL",
    "TOOL_PARAMS",
    "MalformedToolCallError",
    "ToolRequest",
    "new_call_id",
    "read_tool_calls",
    "supports_tools",
    "tool_call_key",
    "tools_token_bound",
    "wants_tools",
]
