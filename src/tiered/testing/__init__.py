"""Test helpers that ship with tiered: one fake OpenAI-compatible upstream for tests,
benchmarks and config checks, with fault injection (:class:`FakeUpstream`, :class:`Reply`),
and OpenAI-shaped response bodies (with tool calls: :func:`tool_call`).

For unit tests without sockets, see :class:`tiered.models.llm.MockTransport`.
"""

from tiered.testing.bodies import (
    Token,
    call_first_tool,
    chat_body,
    completion_body,
    last_text,
    prompt_text,
    sentiment_responder,
    tool_call,
)
from tiered.testing.upstream import FakeUpstream, Reply, Seen, fault_for_model

__all__ = [
    "FakeUpstream",
    "Reply",
    "Seen",
    "Token",
    "call_first_tool",
    "chat_body",
    "completion_body",
    "fault_for_model",
    "last_text",
    "prompt_text",
    "sentiment_responder",
    "tool_call",
]
