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

A model's ``kind`` is looked up in the model registry (:data:`MODELS`): tiered's own kinds
are declared by :mod:`tiered.plugins`, code registers more with :func:`register_model`, and
another package adds kinds through the ``tiered.models`` entry-point group (see
:mod:`tiered.core.registry`). Whatever a model needs beyond its spec (a replay log, the
state store) comes in through :class:`BuildContext`.

A stage may also have a ``gate`` (a rule kind that can ``admit`` items before the stage
runs, e.g. ``{kind: exante_gate, ...}``). Rules may refer to files (a saved quality
estimator): a rule with ``bind(ctx)`` is bound when the cascade is built, so it loads them
relative to the cascade file; a rule with ``externalise(path, saved)`` writes what it
holds in memory next to the cascade file when the spec is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, field_validator

from tiered.core.cascade import Cascade, Stage
from tiered.core.costs import CostModel, RecordedCost, parse_cost
from tiered.core.limits import MAX_STAGES, Name, shorten
from tiered.core.model import Model
from tiered.core.registry import Registry
from tiered.core.rules import Always, AnyRule, DeferralRule
from tiered.core.yaml_file import load_yaml_model
from tiered.errors import ConfigError


@dataclass
class BuildContext:
    """Things models may need when built from a spec."""

    base_dir: Path = field(default_factory=Path.cwd)
    resources: dict[str, Any] = field(default_factory=dict)


ModelFactory = Callable[[dict[str, Any], BuildContext], Model]


def _factory(kind: str, obj: object) -> ModelFactory:
    if not callable(obj):
        raise TypeError(f"a model factory must be callable (spec, ctx) -> Model; got {obj!r}")
    return obj


MODELS: Registry[ModelFactory] = Registry("model", "tiered.models", _factory)


def register_model(kind: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory that builds a model from its spec dict (``{"kind": kind, ...}``)."""

    def deco(factory: ModelFactory) -> ModelFactory:
        MODELS.register(kind, factory)
        return factory

    return deco


def model_kinds() -> list[str]:
    """Every model kind known (tiered's, registered in code, and from installed plugins)."""
    return MODELS.kinds()


def build_model(spec: dict[str, Any], ctx: BuildContext | None = None) -> Model:
    """Build a model from its spec (``{"kind": ..., ...}``) with the factory of its kind."""
    kind = str(spec.get("kind"))
    factory = MODELS.get(kind)
    if factory is None:
        raise ConfigError(
            f"unknown model kind {shorten(repr(kind))}; known kinds: "
            f"{', '.join(MODELS.kinds())} (a package adds kinds through the 'tiered.models' "
            "entry-point group)",
            field="model.kind",
        )
    return factory(spec, ctx or BuildContext())


def _map_rule(rule: DeferralRule, method: str, *args: Any) -> DeferralRule:
    """``rule`` with ``rule.<method>(*args)`` applied to it and every rule inside it."""
    updates: dict[str, Any] = {}
    for name in type(rule).model_fields:
        value = getattr(rule, name)
        if isinstance(value, DeferralRule):
            updates[name] = _map_rule(value, method, *args)
        elif isinstance(value, list) and any(isinstance(x, DeferralRule) for x in value):
            updates[name] = [
                _map_rule(x, method, *args) if isinstance(x, DeferralRule) else x for x in value
            ]
    if updates:
        rule = rule.model_copy(update=updates)
    fn = getattr(rule, method, None)
    return fn(*args) if callable(fn) else rule


def _bind(rule: DeferralRule, ctx: BuildContext) -> DeferralRule:
    """``rule`` (and the rules inside it) bound to ``ctx`` where they have ``bind``."""
    return _map_rule(rule, "bind", ctx)


def _cost(value: Any) -> CostModel:
    """A stage's cost model; a bad one is a ValueError, so pydantic names its stage."""
    try:
        return parse_cost(value)
    except ConfigError as exc:
        raise ValueError(exc.reason) from None


class StageSpec(BaseModel):
    """One stage of a cascade file.

    ```yaml
    - name: llama3.2-3b     # the stage's name in outputs, traces and reports
      model: {kind: replay, model: llama3.2-3b}  # what answers: a model kind + parameters
      rule: {kind: threshold, signal: logprob, threshold: -0.21}  # when it answers
      cost: 0.0002          # USD per call, a cost kind, or null: the cost the model reports
      on_error: raise       # a failing call: raise, or defer its items to the next stage
      gate: {kind: exante_gate, threshold: 0.5}  # optional: which items reach the stage
    ```
    """

    model_config = ConfigDict(extra="forbid")
    name: Name
    model: dict[str, Any]
    rule: AnyRule = Field(default_factory=Always)
    cost: Annotated[SerializeAsAny[CostModel], BeforeValidator(_cost)] = Field(
        default_factory=RecordedCost
    )
    on_error: Literal["raise", "defer"] = "raise"
    gate: AnyRule | None = None

    @field_validator("gate")
    @classmethod
    def _can_gate(cls, v: DeferralRule | None) -> DeferralRule | None:
        if v is not None and not callable(getattr(v, "admit", None)):
            raise ValueError(f"rule kind '{v.kind}' cannot be a gate (it has no 'admit')")
        return v

    @field_validator("model")
    @classmethod
    def _has_kind(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in v:
            raise ValueError("a model spec needs a 'kind'")
        return v


class CascadeSpec(BaseModel):
    """The serializable description of a cascade.

    ```yaml
    name: mmlu-cascade        # the cascade's name (the model name a gateway serves)
    stages: [...]             # cheapest first; the last one always answers
    metadata: {objective: "quality >= top"}   # free-form: what calibration recorded
    ```
    """

    model_config = ConfigDict(extra="forbid")
    name: Name = "cascade"
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES)
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
                Stage(
                    name=s.name,
                    model=model,
                    rule=_bind(s.rule, ctx),
                    cost=s.cost,
                    on_error=s.on_error,
                    gate=None if s.gate is None else _bind(s.gate, ctx),  # type: ignore[arg-type]
                )
            )
        return Cascade(stages)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        for stage in data["stages"]:
            if stage.get("gate") is None:
                stage.pop("gate", None)  # most stages have none: keep cascade files short
        return data

    def save(self, path: str | Path) -> None:
        path = Path(path)
        spec = self.externalised(path)
        text = "# tiered cascade file\n" + yaml.safe_dump(spec.to_dict(), sort_keys=False)
        path.write_text(text, encoding="utf-8")

    def externalised(self, path: str | Path) -> CascadeSpec:
        """The spec with in-memory rule resources written next to the cascade file ``path``."""
        saved: dict[int, str] = {}  # one file per resource object, shared by its rules

        def ext(rule: DeferralRule) -> DeferralRule:
            return _map_rule(rule, "externalise", Path(path), saved)

        stages = [
            s.model_copy(
                update={"rule": ext(s.rule), "gate": None if s.gate is None else ext(s.gate)}
            )
            for s in self.stages
        ]
        return self.model_copy(update={"stages": stages})

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
    "MODELS",
    "BuildContext",
    "CascadeSpec",
    "StageSpec",
    "build_model",
    "load_cascade",
    "model_kinds",
    "register_model",
]
