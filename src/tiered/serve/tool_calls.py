"""Where a chat request with ``tools`` goes: the cascade of the stages that take tools.

A served chat cascade keeps, next to its own stages, a second cascade over the stages
whose model takes tools (or those its ``tools.stages`` names), in the same order and
sharing the same (instrumented) models. A request with tools runs through that one.
An answer of every stage but its last is accepted (``accept``):

- ``tool_call_or_rule`` (default): a well-formed tool call, or an answer the stage's own
  rule accepts (a confident text answer, say), but never a malformed call;
- ``tool_call``: only a well-formed tool call (text answers pass on);
- ``rule``: what the stage's own rule accepts, but never a malformed call.

With one such stage the request goes straight to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from tiered.core.cascade import Cascade, Stage
from tiered.core.items import Item
from tiered.core.rules import AllOf, AnyOf, DeferralRule, Not, Threshold
from tiered.errors import ConfigError
from tiered.models.llm.tools import TOOL_CALL_SIGNAL, supports_tools, wants_tools
from tiered.serve.config import CascadeEntry

# a well-formed tool call (signal 1.0); a text answer or a malformed call passes on
WELL_FORMED = Threshold(signal=TOOL_CALL_SIGNAL, threshold=1.0, direction="above")
# anything but a malformed call (signal 0.0; NaN, a text answer, is not malformed)
NOT_MALFORMED = Not(rule=Threshold(signal=TOOL_CALL_SIGNAL, threshold=0.0, direction="below"))


@dataclass(frozen=True, slots=True)
class ToolRoute:
    """The cascade requests with tools run through, and where its stages sit."""

    cascade: Cascade
    # position in the served cascade of each of its stages
    positions: list[int]


def _accept_rule(stage: Stage, accept: str) -> DeferralRule:
    if accept == "tool_call":
        return WELL_FORMED
    if accept == "rule":
        return AllOf(rules=[NOT_MALFORMED, stage.rule])
    return AllOf(rules=[NOT_MALFORMED, AnyOf(rules=[WELL_FORMED, stage.rule])])


def tool_route(entry: CascadeEntry, cascade: Cascade) -> ToolRoute | None:
    """The route for requests with tools; None when no stage takes them."""
    settings = entry.tools
    if entry.task != "chat":
        return None
    stages = cascade.stages
    if settings is not None and settings.stages:
        chosen = [k for k, s in enumerate(stages) if s.name in settings.stages]
        bad = [stages[k].name for k in chosen if not supports_tools(stages[k].model)]
        if bad:
            raise ConfigError(
                f"tools.stages names stage(s) {bad} whose model does not take tools "
                "(an openai model takes them with tools: true)",
                field="tools.stages",
            )
    else:
        chosen = [k for k, s in enumerate(stages) if supports_tools(s.model)]
    if not chosen:
        if settings is None:
            return None
        raise ConfigError(
            "no stage's model takes tools: set tools: true on an openai stage's model "
            "(mode: generate, endpoint: chat)",
            field="tools",
        )
    accept = settings.accept if settings is not None else "tool_call_or_rule"
    last = chosen[-1]
    routed = [
        stages[k]
        if k == last
        else dataclasses.replace(stages[k], rule=_accept_rule(stages[k], accept))
        for k in chosen
    ]
    return ToolRoute(Cascade(routed), chosen)


def asks_for_tools(items: Sequence[Item]) -> bool:
    return any(wants_tools(it.params) for it in items)


__all__ = ["NOT_MALFORMED", "WELL_FORMED", "ToolRoute", "asks_for_tools", "tool_route"]
