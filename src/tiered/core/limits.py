"""Limits on what tiered reads from files it is given: names, ids, nesting, sizes.

Every count that comes from outside has a bound, so that a hostile or broken file gets
a clear error instead of a traceback, a slow quadratic path or an exhausted memory.
The bounds are far above anything real files hold.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_NAME_CHARS = 256
"""Model, stage, cascade, task, signal and label names; field names of input records."""

MAX_ID_CHARS = 4096
"""A record's id."""

MAX_STAGES = 64
"""Stages of one cascade (real ones have a handful; each stage costs a pass over the items)."""

MAX_DEPTH = 64
"""Nesting of JSON values and YAML collections."""

MAX_LINE_BYTES = 64 * 1024 * 1024
"""One line of a replay log (a record with its inputs and every model's output)."""

MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""A cascade, run or gateway file."""

MAX_CONFIG_NODES = 200_000
"""Values in a config file once YAML aliases are expanded (a "billion laughs" file
expands to far more and is refused before anything walks it)."""

# C0 and C1 control characters (tab and newline included): a name is one printable line
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def name_problem(value: str, what: str = "a name") -> str | None:
    """Why ``value`` is not a valid name (None when it is one)."""
    if not value or value.isspace():
        return f"{what} must not be empty"
    if len(value) > MAX_NAME_CHARS:
        return f"{what} must be at most {MAX_NAME_CHARS} characters. Got {len(value):,} instead"
    bad = _CONTROL.search(value)
    if bad is not None:
        return f"{what} must not contain control characters. Got {bad.group()!r} in it"
    return None


def _check_name(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Name = Annotated[str, AfterValidator(_check_name)]
"""A pydantic field type: a non-empty printable name of at most :data:`MAX_NAME_CHARS`."""


def nesting_depth(value: object, limit: int = MAX_DEPTH) -> int:
    """Depth of nested lists and dicts in ``value``, counted up to ``limit + 1`` (no recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: object = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)  # type: ignore[attr-defined]
    return deepest


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters (with "...") for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "MAX_DEPTH",
    "MAX_ID_CHARS",
    "MAX_LINE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_STAGES",
    "Name",
    "name_problem",
    "nesting_depth",
    "shorten",
]
