"""A separate package adds a model kind and a rule kind through entry points.

Each test "installs" a tiny distribution (a module plus a ``.dist-info`` folder with an
``entry_points.txt``) into a temporary folder put on ``sys.path``: what ``pip install``
of a plugin leaves behind, without touching the environment.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiered.checks import check_model, check_rule, contract_case, rule_examples
from tiered.core import Item, load_cascade, parse_rule
from tiered.core.rules import RULES, rule_kinds
from tiered.core.spec import MODELS, build_model, model_kinds
from tiered.errors import ConfigError
from tiered.plugins import BUILTIN_MODELS, BUILTIN_RULES

PLUGIN = '''
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np

from tiered.checks import ModelCase
from tiered.core import AnswerBatch, BuildContext, DeferralRule, Item, ModelTags, RuleContext


class Shouter:
    """Answers each item with its text in capitals, at a fixed price per call."""

    tags = ModelTags(generates_text=True)

    def __init__(self, usd: float = 0.001, name: str = "shouter") -> None:
        self.usd = usd
        self.name = name

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        return AnswerBatch.from_labels([it.text.upper() for it in items], cost=self.usd)

    @classmethod
    def contract_case(cls) -> ModelCase:
        return ModelCase.from_spec({"kind": "shout", "usd": 0.002})


def build_shouter(spec: dict[str, Any], ctx: BuildContext) -> Shouter:
    return Shouter(float(spec.get("usd", 0.001)), name=spec.get("name", "shouter"))


class ShortText(DeferralRule):
    """Accept the answer when the query is at most ``max_chars`` characters long."""

    kind: Literal["short_text"] = "short_text"
    max_chars: int = 20

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return np.array([len(it.text) <= self.max_chars for it in ctx.items], dtype=bool)

    def describe(self) -> str:
        return f"query of at most {self.max_chars} characters"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(), cls(max_chars=3)]
'''

ENTRY_POINTS = """
[tiered.models]
shout = toy_tiered_plugin:build_shouter

[tiered.rules]
short_text = toy_tiered_plugin:ShortText
"""


def _install(site: Path, name: str, entry_points: str, module: str | None = None) -> None:
    """Write distribution ``name`` (a module of that name, if given, and its metadata)."""
    site.mkdir(parents=True, exist_ok=True)
    mod = name.replace("-", "_")
    if module is not None:
        (site / f"{mod}.py").write_text(module, encoding="utf-8")
    info = site / f"{mod}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder to install plugin distributions into; the registries and sys.modules are
    restored afterwards (plugin kinds do not leak into other tests)."""
    monkeypatch.setattr(MODELS, "_loaded", dict(MODELS._loaded))
    monkeypatch.setattr(RULES, "_loaded", dict(RULES._loaded))
    folder = tmp_path / "site"
    folder.mkdir()
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("toy_tiered_plugin"):
            del sys.modules[name]


def test_a_plugin_adds_a_model_kind_and_a_rule_kind_used_from_yaml(
    site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cascade = tmp_path / "cascade.yaml"
    cascade.write_text(
        "stages:\n"
        "  - name: cheap\n"
        "    model: {kind: shout, usd: 0.001}\n"
        "    rule: {kind: short_text, max_chars: 10}\n"
        "  - name: expert\n"
        "    model: {kind: label_column, field: label, usd_per_call: 0.01}\n"
    )
    with pytest.raises(ConfigError, match="unknown rule kind 'short_text'"):
        load_cascade(cascade)
    _install(site, "toy-tiered-plugin", ENTRY_POINTS, PLUGIN)
    monkeypatch.syspath_prepend(str(site))  # "pip install" while the process runs
    assert "shout" in model_kinds() and "short_text" in rule_kinds()
    assert "toy_tiered_plugin" not in sys.modules  # listing kinds imports nothing

    items = [
        Item(id="a", input="hi there", fields={"label": "x"}),
        Item(id="b", input="a much longer question", fields={"label": "y"}),
    ]
    result = load_cascade(cascade).run(items)
    assert result.labels == ["HI THERE", "y"]
    assert [result.stage_names[i] for i in result.answered_by] == ["cheap", "expert"]
    assert parse_rule({"kind": "short_text"}).describe() == "query of at most 20 characters"


def test_the_contract_checks_find_plugin_kinds(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(site, "toy-tiered-plugin", ENTRY_POINTS, PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    case = contract_case("shout")
    assert case is not None and case.name == "shout"
    assert set(check_model(case).values()) == {"passed"}
    examples = rule_examples("short_text")
    assert [r.describe() for r in examples] == [
        "query of at most 20 characters",
        "query of at most 3 characters",
    ]
    for rule in examples:
        assert set(check_rule(rule).values()) == {"passed"}


def test_a_plugin_that_fails_to_load_is_named(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(site, "broken-plugin", "[tiered.models]\nghost = no_such_module:build\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError, match=r"'ghost' comes from package broken-plugin .*failed"):
        build_model({"kind": "ghost"})


def test_two_plugins_declaring_one_kind_are_refused(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("first-plugin", "second-plugin"):
        _install(site, name, "[tiered.rules]\ntwin = os.path:join\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError, match=r"declared by several .*first-plugin, second-plugin"):
        parse_rule({"kind": "twin"})


def test_a_plugin_object_of_the_wrong_sort_is_refused(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(site, "odd-plugin", "[tiered.rules]\nodd = os.path:sep\n[tiered.models]\nodd = os\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError, match=r"rule kind 'odd' from package odd-plugin .*subclass"):
        parse_rule({"kind": "odd"})
    with pytest.raises(ConfigError, match="importing it did not register it"):
        build_model({"kind": "odd"})


@pytest.mark.parametrize(
    ("registry", "kind", "target"),
    [(MODELS, k, m) for k, m in BUILTIN_MODELS.items()]
    + [(RULES, k, m) for k, m in BUILTIN_RULES.items()],
    ids=[*BUILTIN_MODELS, *BUILTIN_RULES],
)
def test_every_builtin_kind_is_where_plugins_says(registry: object, kind: str, target: str) -> None:
    module, _, name = target.partition(":")
    found = registry.get(kind)  # type: ignore[attr-defined]
    assert found is getattr(importlib.import_module(module), name)


def test_import_tiered_imports_no_model_or_calibration_module() -> None:
    code = (
        "import sys, tiered, tiered.cli\n"
        "from tiered.core.spec import model_kinds\n"
        "assert 'replay' in model_kinds()\n"
        "heavy = ('tiered.models.', 'tiered.calibrate', 'tiered.replay.', 'sklearn', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
