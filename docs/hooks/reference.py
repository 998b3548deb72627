"""The reference pages of the docs site, generated from the code when the site is built.

An MkDocs hook (``hooks:`` in mkdocs.yml). It adds pages that nobody writes by hand, so
they cannot drift from the code:

- one page per file kind (cascade, run, gateway): every YAML key with its type, default
  and meaning, read from the pydantic models that validate the file;
- the model kinds and rule kinds the registries know (tiered's own and installed
  plugins'), with their parameters, and the rules' own examples;
- every command of the command line with its options.

A key's meaning is its field's ``description``, else the comment above or beside the
field in the source, else the comment beside the key in the YAML example of the class's
or module's docstring. ``tests/test_docs.py`` checks that every key and kind is there.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import logging
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_LOG = logging.getLogger("mkdocs.plugins.tiered_reference")  # MkDocs counts its warnings

# pages besides the generated ones that may not exist yet: left out of the nav until they do
OPTIONAL_PAGES = ("providers.md",)


@dataclass(frozen=True)
class Key:
    """One YAML key: where it sits (``online.warmup``), its type, default and meaning."""

    path: str
    type: str
    default: str
    meaning: str


# -- what a field means -------------------------------------------------------------------


def _source_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment above its line (contiguous) or beside it, in ``cls``."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        if line >= 1 and not lines[line - 1].strip():
            above = []  # after a blank line: a heading of several fields, not this one's
        beside = comments.get(node.end_lineno or node.lineno, "")
        text = " ".join(t for t in [*above, beside] if t)
        if text:
            found[node.target.id] = text
    return found


def _yaml_example_comments(doc: str | None) -> dict[str, str]:
    """Key path (``server.deadline_s``) -> the comment beside it in a docstring's YAML."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for raw in (doc or "").splitlines():
        m = re.match(r"^(\s*)(- )?([A-Za-z_][\w-]*):(.*?)(?:\s#\s*(.*))?$", raw)
        if not m:
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), m.group(3)])
        stack.append((indent, m.group(3)))
        if m.group(5):
            found.setdefault(path, m.group(5).strip())
    return found


def _meaning(owner: type[BaseModel], name: str, field: FieldInfo, doc_path: str) -> str:
    """The field's description; for a section, its class's docstring; else the comment
    beside its key in a YAML example; else the comment above or beside it in the source."""
    if field.description:
        return field.description
    nested = _nested(field.annotation)
    if nested is not None and nested[0].__doc__:
        return _first_paragraph(nested[0])
    text = _yaml_example_comments(owner.__doc__).get(name)
    if not text:
        module = inspect.getmodule(owner)
        text = _yaml_example_comments(module.__doc__ if module else None).get(doc_path)
    if text:
        return text
    for cls in owner.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return _source_comments(cls).get(name, "")
    return ""


# -- what a field takes -------------------------------------------------------------------


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """``tp`` without Annotated/optional wrappers, and the metadata found on the way."""
    meta: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        meta.extend(tp.__metadata__)
        tp = tp.__origin__
    return tp, meta


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _bounds(meta: list[Any]) -> str:
    out = []
    for m in meta:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                out.append(f"{sign} {getattr(m, attr):g}")
    return ", ".join(out)


def _min_len(meta: list[Any]) -> int:
    return max((m.min_length for m in meta if isinstance(m, annotated_types.MinLen)), default=0)


def type_text(tp: Any, meta: list[Any] = ()) -> str:  # type: ignore[assignment]
    """An annotation as people read it: ``float ≥ 0 or null``, ``list of name``."""
    from tiered.core.costs import CostModel
    from tiered.core.rules import DeferralRule

    tp, more = _unwrap(tp)
    meta = [*meta, *more]
    args = _union_args(tp)
    if args is not None:
        kinds = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(kinds)
        if type(None) in args:
            text += " or null"
        return text
    origin = typing.get_origin(tp)
    limits = _bounds(meta)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        least = _min_len(meta)
        return f"list of {type_text(item)}" + (f" (at least {least})" if least else "")
    if origin is dict:
        key, value = typing.get_args(tp)
        value_text = "anything" if value is Any else type_text(value)
        return f"mapping of {type_text(key)} to {value_text}"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in typing.get_args(tp)) + "]"
    if isinstance(tp, type) and issubclass(tp, DeferralRule):
        return "[rule](rule-kinds.md)"
    if isinstance(tp, type) and issubclass(tp, CostModel):
        return "[cost](cascade-file.md#costs)"
    if _is_model(tp):
        return "mapping"
    name = getattr(tp, "__name__", str(tp))
    if any(getattr(m, "func", None) and "name" in m.func.__name__ for m in meta):
        name = "name"  # tiered.core.limits.Name: one printable line, bounded length
    elif tp is str and _min_len(meta):
        name = "non-empty str"
    return f"{name} {limits}".strip()


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        dump = value.model_dump(mode="json")
        if set(dump) <= {"kind"}:
            return f"`{dump.get('kind', '')}`" if dump else "`{}`"
        return "see below"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"`{value:,}`" if isinstance(value, int) and abs(value) >= 10_000 else f"`{value}`"
    return f"`{json.dumps(value, default=str, ensure_ascii=False)}`"


def _default_json(field: FieldInfo) -> Any:
    """A field's default as it reads in JSON (what ``to_dict()`` writes)."""
    if field.is_required():
        return PydanticUndefined
    value = field.get_default(call_default_factory=True)
    return None if isinstance(value, BaseModel) else json.loads(json.dumps(value, default=str))


# -- walking a file's models --------------------------------------------------------------


def _nested(tp: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds (itself, in a list, in a mapping), and the path suffix."""
    tp, _ = _unwrap(tp)
    args = _union_args(tp)
    if args is not None:
        inner = [a for a in args if a is not type(None)]
        return _nested(inner[0]) if len(inner) == 1 else None
    origin = typing.get_origin(tp)
    if origin is list:
        got = _nested(typing.get_args(tp)[0])
        return (got[0], "[]" + got[1]) if got else None
    if origin is dict:
        got = _nested(typing.get_args(tp)[1])
        return (got[0], ".<name>" + got[1]) if got else None
    if _is_model(tp):
        from tiered.core.costs import CostModel
        from tiered.core.rules import DeferralRule

        if issubclass(tp, DeferralRule | CostModel):
            return None  # kinds of their own: documented on their pages
        return tp, ""
    return None


def keys_of(model: type[BaseModel], prefix: str = "") -> Iterator[Key]:
    """Every key of ``model``'s YAML form, nested models expanded, in declaration order."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        doc_path = re.sub(r"\[\]|\.<name>", "", path)
        tp = field.annotation
        yield Key(
            path=path,
            type=type_text(tp, list(field.metadata)),
            default=default_text(field),
            meaning=_meaning(model, name, field, doc_path),
        )
        nested = _nested(tp)
        if nested is not None:
            yield from keys_of(nested[0], f"{path}{nested[1]}.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def key_table(keys: list[Key]) -> str:
    """A table of keys; without a meaning column when no key has one (a rule's parameters,
    which its description above explains)."""
    if not any(k.meaning for k in keys):
        rows = ["| key | type | default |", "| --- | --- | --- |"]
        rows += [f"| `{k.path}` | {_cell(k.type)} | {_cell(k.default)} |" for k in keys]
        return "\n".join(rows) + "\n"
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [
        f"| `{k.path}` | {_cell(k.type)} | {_cell(k.default)} | {_cell(k.meaning)} |" for k in keys
    ]
    return "\n".join(rows) + "\n"


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else ""


def _first_paragraph(obj: Any) -> str:
    return _doc(obj).split("\n\n")[0].replace("\n", " ")


# -- the pages ----------------------------------------------------------------------------


def cascade_file_page() -> str:
    from tiered.core import costs, spec

    kinds = sorted(costs.CostModel.__subclasses__(), key=lambda c: c.model_fields["kind"].default)
    parts = [
        "# Cascade files\n",
        "A cascade file is what `tiered calibrate` writes and `tiered eval`, `tiered serve` and "
        "`load_cascade()` read: an ordered list of stages, cheapest first. Each stage is a "
        "[model](model-kinds.md), a [deferral rule](rule-kinds.md) that decides whether the "
        "stage answers or passes the item on, and a [cost model](#costs). The last stage "
        "always answers.\n",
        "```yaml\n" + _yaml_block(_doc(spec)) + "```\n",
        "## Keys\n",
        key_table(list(keys_of(spec.CascadeSpec))),
        "## Costs\n",
        "A stage's `cost` is a number (USD per call), `null` (the cost the model reports), or "
        "a mapping with one of these kinds:\n",
    ]
    for cls in kinds:
        kind = cls.model_fields["kind"].default
        parts.append(f"### `{kind}`\n\n{_first_paragraph(cls)}\n")
        keys = [k for k in keys_of(cls) if k.path != "kind"]
        if keys:
            parts.append(key_table(keys))
    return "\n".join(parts)


def _yaml_block(doc: str) -> str:
    m = re.search(r"```yaml\n(.*?)```", doc, re.S)
    return m.group(1) if m else ""


def run_file_page() -> str:
    from tiered.config import run

    return "\n".join(
        [
            "# Run files\n",
            "The config of `tiered run CONFIG INPUT -o OUTPUT`: which fields of a record to "
            "read, the cheap stages that learn online, the expert (the last stage, whose "
            "answers are the labels the cheap stages learn from), and how the run learns, "
            "audits and checkpoints. Relative paths resolve against the file's folder.\n",
            "```yaml\n" + _yaml_block(_doc(run)) + "```\n",
            "A stage (`cheap[]`, `expert`) is a full mapping (`name`, `model`, "
            "`usd_per_call`) or a bare model spec (`{kind: hashed_ngram, ...}`): see "
            "[model kinds](model-kinds.md) for each kind's parameters.\n",
            "## Keys\n",
            key_table(list(keys_of(run.RunConfig))),
        ]
    )


def gateway_file_page() -> str:
    from tiered.serve import config

    return "\n".join(
        [
            "# Gateway files\n",
            "What `tiered serve FILE...` serves: cascades behind the OpenAI API, with limits, "
            "keys and budgets. Each file is a gateway file or a plain cascade file; at most "
            "one file sets each of `server`, `auth` and `budgets`. "
            "The [gateway guide](../gateway.md) shows it at work.\n",
            "```yaml\n" + _yaml_block(_doc(config)) + "```\n",
            "A cascade's `online` section takes `enabled`, `checkpoint_every_items` and every "
            "key of a run file's [`online` section](run-file.md#keys) (`target_agreement`, "
            "`warmup`, ...).\n",
            "## Keys\n",
            key_table(list(keys_of(config.GatewayFile))),
        ]
    )


def model_schema(factory: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model a model kind's factory validates its spec with, if it uses one:
    the first model class the factory's code names (``parse_params(kind, XParams, spec)``)."""
    from tiered.core.costs import CostModel
    from tiered.core.rules import DeferralRule

    code = getattr(factory, "__code__", None)
    for name in code.co_names if code is not None else ():
        obj = factory.__globals__.get(name)  # type: ignore[attr-defined]
        if _is_model(obj) and not issubclass(obj, DeferralRule | CostModel):
            return obj  # type: ignore[no-any-return]
    return None


def model_kinds_page() -> str:
    from tiered.checks import model_class
    from tiered.core.spec import MODELS

    parts = [
        "# Model kinds\n",
        "A stage's `model` is a mapping with a `kind` and that kind's parameters, e.g. "
        "`{kind: hashed_ngram, alpha: 1.0e-4}`. These are the kinds this installation "
        "knows: tiered's own and those of installed plugins (a package adds kinds through "
        "the `tiered.models` entry-point group; see CONTRIBUTING.md).\n",
    ]
    seen: dict[int, str] = {}
    for kind in MODELS.kinds():
        factory = MODELS.get(kind)
        parts.append(f"## `{kind}`\n")
        if factory is None:
            continue
        if id(factory) in seen:
            parts.append(f"The same model as [`{seen[id(factory)]}`](#{seen[id(factory)]}).\n")
            continue
        seen[id(factory)] = kind
        built = model_class(kind)
        text = _doc(built) if built is not None and built.__doc__ else _doc(factory)
        parts.append(text.split("\n\n")[0].replace("\n", " ") + "\n")
        schema = model_schema(factory)
        if schema is not None:
            parts.append(key_table([k for k in keys_of(schema) if k.path != "kind"]))
        else:
            parts.append(f"Parameters: {_first_paragraph(factory)}\n")
    return "\n".join(parts)


def rule_kinds_page() -> str:
    from tiered.core.rules import RULES

    parts = [
        "# Rule kinds\n",
        "A stage's `rule` decides, from the stage's answers and their confidence signals, "
        "which items the stage answers; the others go on to the next stage. A missing "
        "signal defers (when in doubt, pass on). A stage's `gate` is a rule that can admit "
        "items before the stage runs. A package adds kinds through the `tiered.rules` "
        "entry-point group.\n",
    ]
    for kind in RULES.kinds():
        cls = RULES.get(kind)
        parts.append(f"## `{kind}`\n")
        if cls is None:
            continue
        parts.append(_doc(cls).replace("\n\n", "\n\n") + "\n")
        keys = [k for k in keys_of(cls) if k.path != "kind"]
        if keys:
            parts.append(key_table(keys))
        examples = cls.examples()
        if examples:
            parts.append("Examples (each with what it means):\n")
            for ex in examples:
                # the keys it sets: a parameter left at its default is not written
                shown = {
                    k: v
                    for k, v in ex.to_dict().items()
                    if k == "kind" or v != _default_json(cls.model_fields[k])
                }
                text = yaml.safe_dump({"rule": shown}, sort_keys=False, allow_unicode=True)
                parts.append(f"```yaml\n# {ex.describe()}\n{text}```\n")
    return "\n".join(parts)


def cli_page() -> str:
    import typer

    from tiered.cli import app

    root = typer.main.get_command(app)
    parts = [
        "# Command line\n",
        "`tiered --help` and `tiered COMMAND --help` say the same; `tiered --version` prints "
        "the version. Exit codes: 0 done, 2 a problem with the input (one `error:` line "
        "naming file, line and field), 1 a bug in tiered, 130 interrupted.\n",
    ]

    def walk(cmd: Any, name: str) -> Iterator[tuple[str, Any]]:
        if hasattr(cmd, "commands"):  # a group (typer bundles its own click)
            for sub in sorted(cmd.commands):
                yield from walk(cmd.commands[sub], f"{name} {sub}")
        else:
            yield name, cmd

    for name, cmd in walk(root, "tiered"):
        parts.append(f"## `{name}`\n")
        parts.append(inspect.cleandoc(cmd.help or "") + "\n")
        ctx = cmd.context_class(cmd, info_name=name)
        parts.append(f"```\n{cmd.get_usage(ctx)}\n```\n")
        rows = ["| argument or option | default | meaning |", "| --- | --- | --- |"]
        for p in cmd.params:
            if getattr(p, "hidden", False):
                continue
            names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            default = p.default if not callable(p.default) else None
            shown = "" if p.required or default in (None, False, ()) else f"`{default}`"
            if p.required:
                shown = "required"
            helptext = getattr(p, "help", None) or ""
            rows.append(f"| {names} | {_cell(shown)} | {_cell(helptext)} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


# name in the site -> what writes it
PAGES: dict[str, Callable[[], str]] = {
    "reference/cascade-file.md": cascade_file_page,
    "reference/run-file.md": run_file_page,
    "reference/gateway-file.md": gateway_file_page,
    "reference/model-kinds.md": model_kinds_page,
    "reference/rule-kinds.md": rule_kinds_page,
    "reference/cli.md": cli_page,
}


# -- MkDocs events ------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    """Leave out of the nav an optional page that is not written yet."""
    from pathlib import Path

    docs = Path(config["docs_dir"])

    def keep(entry: Any) -> bool:
        target = next(iter(entry.values())) if isinstance(entry, dict) else entry
        return not (isinstance(target, str) and target in OPTIONAL_PAGES)

    def prune(nav: list[Any]) -> list[Any]:
        out = []
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                out.append({next(iter(entry)): prune(value)})
            elif keep(entry) or (docs / str(value)).exists():
                out.append(entry)
        return out

    if config.get("nav"):
        config["nav"] = prune(config["nav"])
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for name, write in PAGES.items():
        files.append(File.generated(config, name, content=write()))
    return files


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s#:]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    """A link to a file of the repository outside the docs (``../examples/x.yaml``) becomes
    its path in code, as the site does not hold it; a link to a missing file fails the
    build as a broken link would."""
    from pathlib import Path

    docs = Path(config["docs_dir"]).resolve()
    here = (docs / page.file.src_uri).parent
    repo = docs.parent

    def fix(m: re.Match[str]) -> str:
        target = (here / m.group(2)).resolve()
        if target.is_relative_to(docs) or not target.is_relative_to(repo):
            return m.group(0)  # a page of the site (MkDocs checks it), or not a path at all
        if not target.exists():
            _LOG.warning("%s links to %s, which does not exist", page.file.src_uri, m.group(2))
            return m.group(0)
        path = target.relative_to(repo).as_posix()
        text = m.group(1)
        return f"`{path}`" if text.strip("`") == path else f"{text} (`{path}`)"

    return _LINK.sub(fix, markdown)


# Sphinx roles in docstrings (":class:`X`") read as plain code in the API pages
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):(?=<code>)")


def on_page_content(html: str, **_: Any) -> str:
    html = _ROLE.sub("", html)
    return re.sub(r"<code>~(?=[\w.]+</code>)", "<code>", html)
