"""The docs site: its reference pages name every YAML key, model kind, rule kind and command
the code has, and it builds offline with no broken reference (``mkdocs build --strict``)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
from pydantic import BaseModel

import tiered  # noqa: F401 - declares tiered's own kinds
from tiered.cli import app
from tiered.config.run import RunConfig
from tiered.core.rules import RULES
from tiered.core.spec import MODELS, CascadeSpec
from tiered.serve.config import GatewayFile

ROOT = Path(__file__).resolve().parents[1]


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference", ROOT / "docs/hooks/reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as MkDocs loads it (dataclasses look it up there)
    spec.loader.exec_module(module)
    return module


hook = _hook()


def schema_keys(model: type[BaseModel]) -> set[str]:
    """Every key path of a model's YAML form, from pydantic's JSON schema (not the hook's
    own walk), with the hook's notation: ``a.b``, ``list[].x``, ``mapping.<name>.x``."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    out: set[str] = set()

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
        options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
        return resolve(options[0]) if len(options) == 1 else node

    def walk(node: dict[str, Any], prefix: str) -> None:
        node = resolve(node)
        if node.get("type") == "array" and "items" in node:
            walk(node["items"], prefix + "[]")
        elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], prefix + ".<name>")
        for name, sub in node.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            out.add(path)
            if not _is_kind_family(sub):
                walk(sub, path)

    walk(schema, "")
    return out


def _is_kind_family(node: dict[str, Any]) -> bool:
    """A rule or cost: documented on pages of their own, not expanded in place."""
    ref = node.get("$ref", "") + "".join(o.get("$ref", "") for o in node.get("anyOf", []))
    return any(name in ref for name in ("DeferralRule", "CostModel"))


@pytest.mark.parametrize(
    ("page", "model"),
    [
        ("reference/cascade-file.md", CascadeSpec),
        ("reference/run-file.md", RunConfig),
        ("reference/gateway-file.md", GatewayFile),
    ],
)
def test_every_yaml_key_is_listed_with_a_meaning(page: str, model: type[BaseModel]) -> None:
    text = hook.PAGES[page]()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([^`]+)` \|(.*)\|$", text, flags=re.MULTILINE)
    }
    expected = schema_keys(model)
    assert expected, model
    assert expected <= set(rows), sorted(expected - set(rows))
    unexplained = sorted(k for k in expected if not rows[k].rsplit("|", 1)[-1].strip())
    assert unexplained == []


def test_every_model_kind_is_listed_with_its_parameters() -> None:
    text = hook.PAGES["reference/model-kinds.md"]()
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert set(sections) == set(MODELS.kinds())
    for kind in MODELS.kinds():
        factory = MODELS.get(kind)
        if getattr(factory, "__module__", "").startswith("tests."):
            continue  # a stand-in another test module registered; the docs build never sees it
        schema = hook.model_schema(factory)
        if schema is None:
            assert kind == "replay" and "model" in sections[kind], kind  # keys in its docstring
            continue
        for name in schema.model_fields:
            if name != "kind" and "The same model as" not in sections[kind]:
                assert f"| `{name}` |" in sections[kind], (kind, name)


def test_every_rule_kind_is_listed_with_its_examples() -> None:
    text = hook.PAGES["reference/rule-kinds.md"]()
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert set(sections) == set(RULES.kinds())
    for kind in RULES.kinds():
        cls = RULES.get(kind)
        assert cls is not None and cls.__doc__
        examples = cls.examples()
        assert examples, f"rule kind {kind} has no examples"
        for ex in examples:
            assert f"# {ex.describe()}\n" in sections[kind]
        for name in cls.model_fields:
            if name != "kind":
                assert f"| `{name}` |" in sections[kind], (kind, name)


def test_every_command_and_option_is_listed() -> None:
    text = hook.PAGES["reference/cli.md"]()
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", {"": cmd})
        for sub, leaf in subs.items():
            heading = f"## `tiered {name}{' ' + sub if sub else ''}`"
            assert heading in text
            for p in leaf.params:
                if getattr(p, "hidden", False):
                    continue  # left out of --help on purpose
                for opt in p.opts:
                    if opt.startswith("-"):
                        assert f"`{opt}`" in text, (name, opt)


def test_a_link_to_a_missing_repository_file_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "real.yaml").write_text("a: 1\n", encoding="utf-8")
    page = type("Page", (), {"file": type("F", (), {"src_uri": "guide.md"})()})()
    text = "[real](../examples/real.yaml), [gone](../examples/gone.yaml), [page](other.md)"
    with caplog.at_level("WARNING"):
        out = hook.on_page_markdown(text, page=page, config={"docs_dir": str(docs)})
    assert "real (`examples/real.yaml`)" in out
    assert "[page](other.md)" in out  # a page of the site: MkDocs checks it
    assert any("gone.yaml, which does not exist" in r.getMessage() for r in caplog.records)


def test_the_site_builds_offline_without_warnings(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or a docstring the API pages
    cannot read fails it. Nothing is fetched and the pages load nothing from the web."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for page in hook.PAGES:
        assert (site / page.removesuffix(".md") / "index.html").is_file(), page
    assert (site / "api" / "core" / "index.html").is_file()
    remote = re.compile(r"""<(?:script|link|img)[^>]+(?:src|href)=["']https?://""")
    for html in site.rglob("*.html"):
        assert not remote.search(html.read_text(encoding="utf-8")), html
