"""OpenAI-shaped response bodies for fakes and tests: chat and completions, with log-probs
and tool calls."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

Token = tuple[str, float, dict[str, float]]  # token, its logprob, top alternatives


def _envelope(
    kind: str, model: str, choices: list[dict[str, Any]], usage: tuple[int, int]
) -> dict[str, Any]:
    p, c = usage
    return {
        "id": "chatcmpl-fake" if kind == "chat.completion" else "cmpl-fake",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    }


def chat_body(
    text: str,
    tokens: Sequence[Token] | None = None,
    n: int = 1,
    *,
    usage: tuple[int, int] | None = None,
    model: str = "fake",
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` answering ``text`` (``n`` identical choices), or calling
    ``tool_calls`` (see :func:`tool_call`; ``text`` may then be empty)."""
    logprobs = None
    if tokens is not None:
        logprobs = {
            "content": [
                {
                    "token": t,
                    "logprob": lp,
                    "top_logprobs": [{"token": a, "logprob": b} for a, b in top.items()],
                }
                for t, lp, top in tokens
            ]
        }
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": list(tool_calls)}
    choices = [
        {
            "index": i,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": "tool_calls" if tool_calls else "stop",
        }
        for i in range(n)
    ]
    return _envelope("chat.completion", model, choices, usage or (10, 2 * n))


def completion_body(
    text: str,
    tokens: Sequence[Token] | None = None,
    *,
    usage: tuple[int, int] | None = None,
    model: str = "fake",
) -> dict[str, Any]:
    """A ``text_completion`` answering ``text``."""
    logprobs = None
    if tokens is not None:
        logprobs = {
            "tokens": [t for t, _, _ in tokens],
            "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens],
            "text_offset": list(range(len(tokens))),
        }
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "stop"}
    return _envelope("text_completion", model, [choice], usage or (10, 2))


def tool_call(
    name: str, arguments: str | Mapping[str, Any], call_id: str | None = None
) -> dict[str, Any]:
    """One tool call as OpenAI returns it (arguments written as a JSON string)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": call_id or "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


_EXAMPLE = {"string": "test", "integer": 1, "number": 1.5, "boolean": True, "array": []}


def example_arguments(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Arguments fitting a function's JSON schema: each required parameter, by its type
    (its first ``enum`` value when it has one)."""
    schema = schema or {}
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or []:
        prop = props.get(name) or {}
        if prop.get("enum"):
            out[name] = prop["enum"][0]
        else:
            out[name] = _EXAMPLE.get(str(prop.get("type")), {})
    return out


def call_first_tool(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """A call of the function a request forces (``tool_choice``), else of its first tool,
    with :func:`example_arguments`; None when it declares no tools."""
    tools = [t.get("function") or {} for t in body.get("tools") or []]
    if not tools:
        return None
    choice = body.get("tool_choice")
    forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    fn = next((t for t in tools if t.get("name") == forced), tools[0])
    return [tool_call(str(fn.get("name")), example_arguments(fn.get("parameters")))]


def prompt_text(body: dict[str, Any]) -> str:
    """The text a request asks about (its prompt, or its messages' contents joined)."""
    if "prompt" in body:
        prompt = body["prompt"]
        return prompt if isinstance(prompt, str) else str(prompt[0] if prompt else "")
    parts = []
    for m in body.get("messages") or []:
        content = m.get("content", "") if isinstance(m, dict) else ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "\n".join(parts)


def last_text(body: dict[str, Any]) -> str:
    """The last message's content (or the prompt)."""
    if "messages" in body:
        msgs = body.get("messages") or [{}]
        return prompt_text({"messages": msgs[-1:]})
    return prompt_text(body)


def label_logprobs(
    text: str, labels: Sequence[str], logprob: float, top: int
) -> list[dict[str, Any]]:
    """Chat ``logprobs.content`` for a one-token answer: ``text`` gets ``logprob``, the
    other labels share the rest of the mass."""
    others = [lab for lab in labels if lab != text][: max(top - 1, 0)]
    rest = math.log(max(1 - math.exp(logprob), 1e-12) / max(len(others), 1))
    tops = [{"token": text, "logprob": logprob, "bytes": None}]
    tops += [{"token": o, "logprob": rest, "bytes": None} for o in others]
    return [{"token": text, "logprob": logprob, "bytes": None, "top_logprobs": tops}]


def sentiment_responder(body: dict[str, Any]) -> dict[str, Any]:
    """'good' in the text → positive (p≈0.9), 'bad' → negative, else an off-label answer."""
    text = prompt_text(body).rsplit("Text:", 1)[-1]
    if "good" in text:
        word, tokens = "positive", [(" positive", -0.1, {" positive": -0.1, " negative": -2.4})]
    elif "bad" in text:
        word, tokens = "negative", [(" negative", -0.2, {" negative": -0.2, " positive": -1.8})]
    else:
        word, tokens = "banana", [(" banana", -0.05, {" banana": -0.05, " the": -3.5})]
    if "prompt" in body:
        return completion_body(" " + word, tokens)
    # chat models answer without the leading space, capitalised
    chat_tokens = [
        (t.strip().capitalize(), lp, {a.strip().capitalize(): b for a, b in top.items()})
        for t, lp, top in tokens
    ]
    return chat_body(word.capitalize(), chat_tokens)


__all__ = [
    "Token",
    "call_first_tool",
    "chat_body",
    "completion_body",
    "example_arguments",
    "label_logprobs",
    "last_text",
    "prompt_text",
    "sentiment_responder",
    "tool_call",
]
