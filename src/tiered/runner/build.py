"""The online cascade of a run, built from its config; build errors name file, line, field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tiered.config.run import EXPERT_STAGE
from tiered.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tiered.config.run import StageConfig
    from tiered.core.answers import AnswerBatch
    from tiered.core.cascade import Stage
    from tiered.core.items import Item
    from tiered.core.model import Model
    from tiered.core.spec import BuildContext
    from tiered.online import OnlineCascade
    from tiered.runner.plan import RunPlan

ModelWrapper = Callable[["Model"], "Model"]
"""Wraps a built model (to time its calls, say) before the cascade uses it."""


@dataclass
class RunCascade:
    """The built cascade and what the run reads from its parts."""

    cascade: OnlineCascade
    cheap: list[Stage]
    expert: Stage
    # the expert is a column of the input: its labels are free to read, so the true
    # agreement of every answer with the expert can be reported
    expert_is_column: bool
    target: float | None

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.cheap] + [self.expert.name]


def _located(reason: str, field_path: str, plan: RunPlan) -> ConfigError:
    """A build-time config error with the config file, the field's line and its full path."""
    if plan.config_path is None:
        return ConfigError(reason, field=field_path)
    from tiered.core.yaml_file import _line_of, load_yaml

    _, node = load_yaml(plan.config_path)
    loc: list[int | str] = [int(p) if p.isdigit() else p for p in field_path.split(".")]
    return ConfigError(reason, path=plan.config_path, line=_line_of(node, loc), field=field_path)


def _stage(
    spec: StageConfig,
    name: str,
    prefix: str,
    plan: RunPlan,
    ctx: BuildContext,
    wrap: ModelWrapper | None,
) -> Stage:
    from tiered.core.cascade import Stage
    from tiered.core.costs import CostModel, FixedCost, RecordedCost
    from tiered.core.spec import build_model

    try:
        model = build_model(spec.model, ctx)
    except ConfigError as exc:
        inner = exc.field.removeprefix("model.").removeprefix("model") if exc.field else ""
        where = f"{prefix}.model.{inner}" if inner else f"{prefix}.model"
        raise _located(exc.reason, where, plan) from exc
    if wrap is not None:
        model = wrap(model)
    cost: CostModel = (
        FixedCost(usd_per_call=spec.usd_per_call)
        if spec.usd_per_call is not None
        else RecordedCost()
    )
    return Stage(name=name, model=model, cost=cost)


def build_cascade(plan: RunPlan, *, wrap_expert: ModelWrapper | None = None) -> RunCascade:
    """The plan's online cascade: its cheap stages in front of the expert."""
    from tiered.core.spec import BuildContext
    from tiered.online import OnlineCascade

    cfg = plan.config
    # store_path: an LLM stage keeps its response cache in the run's store, so a re-run
    # after a kill does not pay again for the items after the checkpoint
    resources: dict[str, Any] = {"store_path": str(plan.store)}
    ctx = BuildContext(base_dir=plan.base_dir, resources=resources)
    cheap = [
        _stage(s, s.stage_name, f"cheap.{i}", plan, ctx, None) for i, s in enumerate(cfg.cheap)
    ]
    expert = _stage(cfg.expert, EXPERT_STAGE, "expert", plan, ctx, wrap_expert)
    cascade = OnlineCascade(cheap=cheap, expert=expert, config=cfg.online, seed=cfg.seed)
    return RunCascade(
        cascade=cascade,
        cheap=cheap,
        expert=expert,
        expert_is_column=cfg.expert.model.get("kind") == "label_column",
        target=cfg.online.target_agreement,
    )


def stage_answers(stage: Stage, items: Sequence[Item]) -> AnswerBatch:
    """The stage's model's answers to ``items``; another count is a :class:`ModelError`."""
    answers = stage.model.predict(items)
    if len(answers) != len(items):
        raise ModelError(
            f"model of stage '{stage.name}' returned {len(answers)} answers for {len(items)}"
        )
    return answers


__all__ = ["ModelWrapper", "RunCascade", "build_cascade", "stage_answers"]
