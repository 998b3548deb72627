from __future__ import annotations

from pathlib import Path

import pytest

from tiered.core import CascadeSpec, Threshold, load_cascade, register_model
from tiered.core.spec import BuildContext
from tiered.errors import ConfigError

from .conftest import FakeModel


@register_model("test-constant")
def _constant(spec: dict, ctx: BuildContext) -> FakeModel:
    return FakeModel(
        spec.get("name", "c"), lambda it, lab=spec["label"]: lab, cost=float(spec.get("cost", 1.0))
    )


def test_cascade_file_round_trip(tmp_path: Path) -> None:
    spec = CascadeSpec(
        name="demo",
        stages=[
            {
                "name": "cheap",
                "model": {"kind": "test-constant", "label": "a", "cost": 1},
                "rule": Threshold(signal="score", threshold=0.5),
            },
            {
                "name": "big",
                "model": {"kind": "test-constant", "label": "b", "cost": 5},
                "cost": 0.5,
            },
        ],
        metadata={"objective": "quality >= top"},
    )
    path = tmp_path / "cascade.yaml"
    spec.save(path)
    assert CascadeSpec.load(path) == spec
    cascade = load_cascade(path)
    assert cascade.stage_names == ["cheap", "big"]


def test_bad_cascade_file_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "stages:\n"
        "  - name: cheap\n"
        "    model: {kind: test-constant, label: a}\n"
        "    rule:\n"
        "      kind: threshold\n"
        "      signal: logprob\n"
        "      threshold: high\n"
    )
    with pytest.raises(ConfigError) as err:
        CascadeSpec.load(path)
    msg = str(err.value)
    assert f"{path}:7" in msg and "threshold" in msg and "'high'" in msg


def test_unknown_model_kind(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - name: x\n    model: {kind: nope}\n")
    with pytest.raises(
        ConfigError,
        match=r"field 'stages\.0\.model\.kind': unknown model kind 'nope'",
    ):
        load_cascade(path)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - name: x\n   bad: [\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        CascadeSpec.load(path)
