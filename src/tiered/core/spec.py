"""Cascade files: the YAML form of a cascade, and building a runnable one from it.

```yaml
name: mmlu-cascade
stages:
  - name: llama3.2-3b
    model: {kind: replay, model: llama3.2-3b}
    rule: {kind: threshold, signal: logprob, threshold: -0.21}
  - name: llama3.1-405b
    model: {kind: replay, model: llama3.1-405b}
metadata: {objective: "quality >= top", fitted_on: chains_mmlu.jsonl}
```

A model's ``kind`` is looked up in the model registry; packages register kinds with
:func:`register_model`. Whatever a model needs beyond its spec (a replay log, the state
store) comes in through :class:`BuildContext`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, field_validator

from tiered.config import load_yaml_model
from tiered.core.cascade import Cascade, Stage
from tiered.core.costs import CostModel, RecordedCost, parse_cost
from tiered.core.model import Model
from tiered.core.rules import Always, AnyRule
from tiered.errors import ConfigError


@dataclass
class BuildContext:
    """Things models may need when built from a spec."""

    base_dir: Path = field(default_factory=Path.cwd)
    resources: dict[str, Any] = field(default_factory=dict)


ModelFactory = Callable[[dict[str, Any], BuildContext], Model]
_MODELS: dict[str, ModelFactory] = {}


def register_model(kind: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory that builds a model from its spec dict (``{"kind": kind, ...}``)."""

    def deco(factory: ModelFactory) -> ModelFactory:
        _MODELS[kind] = factory
        return factory

    return deco


def model_kinds() -> list[str]:
    _load_builtin_models()
    return sorted(_MODELS)


def _load_builtin_models() -> None:
    importlib.import_module("tiered.models")


def build_model(spec: dict[str, Any], ctx: BuildContext | None = None) -> Model:
    _load_builtin_models()
    kind = spec.get("kind")
    factory = _MODELS.get(str(kind))
    if factory is None:
        raise ConfigError(
            f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(_MODELS))}",
            field="model.kind",
        )
    return factory(spec, ctx or BuildContext())


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    model: dict[str, Any]
    rule: AnyRule = Field(default_factory=Always)
    cost: Annotated[SerializeAsAny[CostModel], BeforeValidator(parse_cost)] = Field(
        default_factory=RecordedCost
    )
    on_error: Literal["raise", "defer"] = "raise"

    @field_validator("model")
    @classmethod
    def _has_kind(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in v:
            raise ValueError("a model spec needs a 'kind'")
        return v


class CascadeSpec(BaseModel):
    """The serializable description of a cascade."""

    model_config = ConfigDict(extra="forbid")
    name: str = "cascade"
    stages: list[StageSpec] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def build(self, ctx: BuildContext | None = None) -> Cascade:
        ctx = ctx or BuildContext()
        stages = []
        for i, s in enumerate(self.stages):
            try:
                model = build_model(s.model, ctx)
            except ConfigError as exc:
                raise ConfigError(exc.reason, field=f"stages.{i}.{exc.field or 'model'}") from exc
            stages.append(
                Stage(name=s.name, model=model, rule=s.rule, cost=s.cost, on_error=s.on_error)
            )
        return Cascade(stages)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        text = "# tiered cascade file\n" + yaml.safe_dump(self.to_dict(), sort_keys=False)
        Path(path).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CascadeSpec:
        return load_yaml_model(path, cls)


def load_cascade(path: str | Path, ctx: BuildContext | None = None) -> Cascade:
    """Load a cascade file and build it; relative paths inside resolve against its folder."""
    spec = CascadeSpec.load(path)
    ctx = ctx or BuildContext(base_dir=Path(path).resolve().parent)
    try:
        return spec.build(ctx)
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(exc.reason, path=path, field=exc.field) from exc
        raise


__all__ = [
    "BuildContext",
    "CascadeSpec",
    "StageSpec",
    "build_model",
    "load_cascade",
    "model_kinds",
    "register_model",
]
