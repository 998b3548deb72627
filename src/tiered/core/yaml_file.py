"""YAML → pydantic with located errors, within limits.

PyYAML's node tree keeps the line of every key; we walk it alongside pydantic's error
``loc`` so that a bad value is reported as ``cascade.yaml:12, field 'stages.1.rule.threshold'``.

A file is read as bytes (at most :data:`~tiered.core.limits.MAX_CONFIG_BYTES`), decoded as
UTF-8 (a bad byte is an error naming its line), parsed once with the safe loader (no
Python objects, only plain data), and refused when it nests deeper than
:data:`~tiered.core.limits.MAX_DEPTH` or its aliases expand to more than
:data:`~tiered.core.limits.MAX_CONFIG_NODES` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tiered.core.limits import MAX_CONFIG_BYTES, MAX_CONFIG_NODES, MAX_DEPTH, shorten
from tiered.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# libyaml's parser when PyYAML was built with it (it reads a large file many times faster)
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the deepest node along ``loc`` that exists."""
    if node is None:
        return None
    line: int | None = node.start_mark.line + 1
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


def _check_shape(node: yaml.Node, path: Path) -> None:
    """Refuse a tree nested too deeply, or whose aliases expand to too many values.

    Sizes are counted per distinct node (an alias reuses a node), so a "billion laughs"
    file is measured in linear time without expanding it.
    """
    size: dict[int, int] = {}
    # iterative post-order walk: (node, depth, children done)
    stack: list[tuple[yaml.Node, int, bool]] = [(node, 1, False)]
    on_path: set[int] = set()
    while stack:
        n, depth, done = stack.pop()
        key = id(n)
        if done:
            on_path.discard(key)
            children = _children(n)
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"too large: over {MAX_CONFIG_NODES:,} values (each use of an alias counted)",
                    path=path,
                    line=n.start_mark.line + 1,
                )
            size[key] = total
            continue
        if key in size:
            continue
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"nested deeper than {MAX_DEPTH} levels", path=path, line=n.start_mark.line + 1
            )
        if key in on_path:  # a recursive alias (PyYAML builds those for `&a [*a]`)
            raise ConfigError(
                "an alias refers to a value that contains it", path=path, line=n.start_mark.line + 1
            )
        on_path.add(key)
        stack.append((n, depth, True))
        stack.extend((c, depth + 1, False) for c in _children(n) if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", path=path, line=line
        ) from None


def load_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return its data and its node tree (for error lines)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", path=p) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a YAML file", path=p) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=p) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a config file", path=p)
    text = _decode(raw, p)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_shape(node, p)
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise ConfigError(
            f"invalid YAML: character {char!r} is not allowed",
            path=p,
            line=text.count("\n", 0, exc.position) + 1,
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        if "nesting depth" in problem:  # libyaml's own bound, below Python's stack
            problem = f"nested deeper than {MAX_DEPTH} levels"
        raise ConfigError(f"invalid YAML: {shorten(problem, 200)}", path=p, line=line) from None
    except RecursionError:  # a parser nests deeper than Python's stack before we can check
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", path=p) from None
    except (TypeError, ValueError) as exc:
        # a value PyYAML cannot build: an unhashable key (`? [a]: b`), a bad date ...
        raise ConfigError(f"invalid YAML: {shorten(str(exc), 200)}", path=p) from None
    finally:
        loader.dispose()
    return data, node


def _show_input(value: Any) -> str:
    """A value pydantic refused, short (it may be a huge string or a deep tree)."""
    if isinstance(value, dict | list):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} of {len(value):,} entries"
    return shorten(repr(value), 80)


def _field_part(key: int | str) -> str:
    """One key of a field's path, printable and short (keys come from the file)."""
    text = str(key)
    return shorten(text if text.isprintable() else repr(text)[1:-1], 60)


def validation_error_to_config_error(
    exc: ValidationError, *, path: str | Path | None = None, node: yaml.Node | None = None
) -> ConfigError:
    """The first pydantic error as a ConfigError naming file, line and field."""
    err = exc.errors()[0]
    loc = [x for x in err["loc"] if isinstance(x, int | str)]
    # pydantic puts the union member's tag into loc for tagged unions; it is not a YAML key
    field = ".".join(_field_part(x) for x in loc) or None
    msg = shorten(err["msg"], 500)
    if err["type"] == "value_error":
        # our own validators' messages: they say what they got when it helps
        msg = msg.removeprefix("Value error, ")
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg}. Got {_show_input(err['input'])} instead"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(msg, path=path, line=_line_of(node, loc), field=field)


def validate_yaml(data: Any, node: yaml.Node | None, path: str | Path, model: type[M]) -> M:
    """Validate data read by :func:`load_yaml` as ``model``; errors name file, line, field."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error_to_config_error(exc, path=path, node=node) from None
    except ConfigError as exc:
        if exc.path is None:
            loc = [int(x) if x.isdigit() else x for x in (exc.field or "").split(".") if x]
            line = exc.line if exc.line is not None else _line_of(node, loc) if loc else None
            raise ConfigError(exc.reason, path=path, line=line, field=exc.field) from exc
        raise


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Load and validate a YAML file as ``model``."""
    data, node = load_yaml(path)
    return validate_yaml(data, node, path, model)


__all__ = ["load_yaml", "load_yaml_model", "validate_yaml", "validation_error_to_config_error"]
