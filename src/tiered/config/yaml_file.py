"""YAML → pydantic with located errors.

PyYAML's node tree keeps the line of every key; we walk it alongside pydantic's error
``loc`` so that a bad value is reported as ``cascade.yaml:12, field 'stages.1.rule.threshold'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tiered.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the deepest node along ``loc`` that exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == str(key):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(key, int)
            and 0 <= key < len(node.value)
        ):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def load_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return its data and its node tree (for error lines)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=p) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", path=p, line=line) from exc
    return data, node


def validation_error_to_config_error(
    exc: ValidationError, *, path: str | Path | None = None, node: yaml.Node | None = None
) -> ConfigError:
    """The first pydantic error as a ConfigError naming file, line and field."""
    err = exc.errors()[0]
    loc = [x for x in err["loc"] if isinstance(x, int | str)]
    # pydantic puts the union member's tag into loc for tagged unions; it is not a YAML key
    field = ".".join(str(x) for x in loc) or None
    msg = err["msg"]
    if "input" in err and err["type"] not in ("missing",):
        msg = f"{msg}. Got {err['input']!r} instead"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(msg, path=path, line=_line_of(node, loc), field=field)


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Load and validate a YAML file as ``model``."""
    data, node = load_yaml(path)
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, path=path, node=node) from exc
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(exc.reason, path=path, line=exc.line, field=exc.field) from exc
        raise
