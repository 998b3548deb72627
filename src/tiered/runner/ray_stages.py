"""The steps of a batch run: a frozen online cascade, one stage per step.

:func:`freeze` takes what an :class:`~tiered.online.OnlineCascade` learned on the sample
(each cheap stage's model, deferral head and accuracy tracker, and the controller's
threshold) as plain data (:mod:`tiered.store.state`: arrays + JSON, never pickle). Each
step is a callable class built once from that (a Ray actor loads its stage's model once)
and called on Arrow tables of :mod:`tiered.runner.ray_parts`:

- :class:`CheapStep` runs stage ``k`` on the rows still open and accepts those whose
  head says P(agrees with the expert) >= the frozen threshold, as the online cascade
  does; an accepted row is drawn for an audit with probability ``online.audit_rate``
  (from a hash of the seed and the row's partition and offset: a re-run draws the same).
  Rows answered before, and rejects, pass untouched: the model never sees them.
- :class:`ExpertStep` asks the expert about the rows still open and the audited ones.
  An audited row outputs the expert's label, and keeps the cheap one in ``cheap_label``
  (:class:`~tiered.online.OnlineDecision` says the same for the online cascade), so the
  audit counts add up to one agreement estimate whichever worker drew them.

Nothing learns at scale: the cascade is frozen, every worker answers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.config.run import EXPERT_STAGE, RunConfig
from tiered.errors import StoreError
from tiered.online.head import AccuracyTracker, DeferralHead, head_features
from tiered.runner.build import stage_answers
from tiered.runner.ray_parts import FINAL, column, items_of, open_rows, with_columns
from tiered.store.state import decode_state

if TYPE_CHECKING:
    import pyarrow as pa

    from tiered.core.answers import AnswerBatch
    from tiered.core.cascade import Stage
    from tiered.online import OnlineCascade

FROZEN_FORMAT = "tiered-frozen-cascade"
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's multipliers


def frozen_threshold(cascade: OnlineCascade) -> float:
    """The threshold to hold from now on, with nothing to spend or make up.

    The online controller's last threshold spends the sample's surplus (warm-up items
    agree by definition) or makes up a shortfall; frozen, it would do so for the whole
    input. Instead the controller's own prediction (the current heads on its window of
    recent items, corrected by the audits) picks the lowest threshold whose agreement
    reaches the target; with ``control: anytime`` the target of the confidence bound,
    translated as the controller does. ``mu`` configs keep their fixed threshold; an
    escalated cascade (agreement below target) sends every item to the expert.
    """
    from tiered.online.confseq import bound_inflation
    from tiered.online.head import max_prob_from_features

    cfg, ctrl = cascade.config, cascade.controller
    if cfg.target_agreement is None or (ctrl.escalated and cfg.escalate):
        return float(ctrl.threshold)
    required = float(cfg.target_agreement)
    if cfg.control == "anytime":
        disagreed = cascade.meter.total_audits - cascade.meter.total_agree
        grow = bound_inflation(disagreed, cfg.audit_rate, 1.0 - cfg.confidence)
        required = 1.0 - (1.0 - required - cfg.anytime_margin) / grow
    if cfg.deferral_signal == "max_prob":
        scorers = [max_prob_from_features] * len(cascade.cheap)
    else:
        scorers = [h.predict for h in cascade.heads]
    ok = np.flatnonzero(ctrl.predicted_agreement(scorers) >= min(required, 1.0))
    return float(ctrl.grid[ok[0]] if ok.size else ctrl.grid[-1])


def freeze(cascade: OnlineCascade, config: RunConfig) -> dict[str, Any]:
    """What ``cascade`` learned, for the steps: its stages' state and the threshold to hold
    (:func:`frozen_threshold`), as a state tree (:func:`~tiered.store.state.encode_state`
    makes it :attr:`StepSpec.frozen`)."""
    state = cascade.state_dict()
    stages = [
        {"model": m, "head": h, "tracker": t}
        for m, h, t in zip(state["models"], state["heads"], state["trackers"], strict=True)
    ]
    return {
        "format": FROZEN_FORMAT,
        "config": config.model_dump(mode="json"),
        "threshold": frozen_threshold(cascade),
        "stages": stages,
    }


@dataclass(frozen=True)
class StepSpec:
    """What every step is built from (plain data: it ships to Ray's workers).

    ``store``: the run's SQLite store, where LLM stages keep their response cache; a
    worker on a node that cannot see its folder answers without the cache.
    """

    frozen: bytes
    base_dir: str
    store: str
    config_path: str | None = None

    def open(self) -> tuple[RunConfig, dict[str, Any]]:
        tree = decode_state(self.frozen, what="the frozen cascade")
        if not isinstance(tree, dict) or tree.get("format") != FROZEN_FORMAT:
            raise StoreError("the frozen cascade is not one this version of tiered wrote")
        return RunConfig.model_validate(tree["config"]), tree

    def build(self, cfg: RunConfig, k: int | None) -> Stage:
        """Cheap stage ``k`` (None: the expert), as ``tiered run`` builds it."""
        from tiered.core.spec import BuildContext
        from tiered.runner.build import _stage
        from tiered.runner.plan import RunPlan

        store = Path(self.store)
        resources = {"store_path": self.store} if store.parent.is_dir() else {}
        base = Path(self.base_dir)
        plan = RunPlan(
            config=cfg,
            input="-",
            output=store,
            store=store,
            rejects=store,
            base_dir=base,
            config_path=Path(self.config_path) if self.config_path else None,
        )
        ctx = BuildContext(base_dir=base, resources=resources)
        if k is None:
            return _stage(cfg.expert, EXPERT_STAGE, "expert", plan, ctx, None)
        spec = cfg.cheap[k]
        return _stage(spec, spec.stage_name, f"cheap.{k}", plan, ctx, None)


def audit_draws(seed: int, part: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per row from (seed, partition, offset): the same on every run."""
    x = (part.astype(np.uint64) << np.uint64(40)) ^ offset.astype(np.uint64)
    x = x ^ np.full(x.shape, (seed * 0x9E3779B97F4A7C15) & (2**64 - 1), dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


class CheapStep:
    """Cheap stage ``k`` of the frozen cascade over a table (see the module docstring)."""

    def __init__(self, spec: StepSpec, k: int) -> None:
        cfg, tree = spec.open()
        on = cfg.online
        self.stage = spec.build(cfg, k)
        s = tree["stages"][k]
        if s["model"] is not None:
            self.stage.model.load_state_dict(s["model"])  # type: ignore[attr-defined]
        self.head = DeferralHead(on.head_buffer, on.head_l2, on.head_min_examples, on.head_halflife)
        self.head.load_state_dict(s["head"])
        self.tracker = AccuracyTracker(on.accuracy_halflife)
        self.tracker.load_state_dict(s["tracker"])
        self.threshold = float(tree["threshold"])
        self.max_prob = on.deferral_signal == "max_prob"
        self.audit_rate = on.audit_rate
        self.seed = cfg.seed

    def _score(self, answers: AnswerBatch, x: np.ndarray) -> np.ndarray:
        if not self.max_prob:
            return self.head.predict(x)
        if answers.probs is None or answers.probs.shape[1] == 0:
            return np.zeros(len(answers))
        top: np.ndarray = answers.probs.max(axis=1)
        return top

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = open_rows(table)
        if rows.size == 0:
            return table
        answers = stage_answers(self.stage, items_of(table, rows))
        cost = column(table, "cost").astype(float)
        cost[rows] += self.stage.cost.cost(answers)
        x = head_features(answers, self.tracker)
        ok = answers.answered
        p = np.where(ok, self._score(answers, x), 0.0)
        accept = ok & (p >= self.threshold)
        take = rows[accept]
        label = np.array(column(table, "label"), dtype=object)
        label[take] = np.array(answers.labels, dtype=object)[accept]
        stage = np.array(column(table, "stage"), dtype=object)
        stage[take] = self.stage.name
        conf = column(table, "confidence").astype(float)
        conf[take] = p[accept]
        audit = column(table, "_audit").astype(bool)
        draws = audit_draws(self.seed, column(table, "_part")[take], column(table, "_offset")[take])
        audit[take] = draws < self.audit_rate
        cols = {"label": label, "stage": stage, "confidence": conf, "cost": cost, "_audit": audit}
        return with_columns(table, cols)


class ExpertStep:
    """The expert over a table: the open rows and the audited ones; then only the
    columns the writer needs (:data:`~tiered.runner.ray_parts.FINAL`)."""

    def __init__(self, spec: StepSpec) -> None:
        cfg, _ = spec.open()
        self.stage = spec.build(cfg, None)
        # a label column is free to read: every row's truth, for the summary
        self.is_column = cfg.expert.model.get("kind") == "label_column"

    def __call__(self, table: pa.Table) -> pa.Table:
        is_open = np.zeros(table.num_rows, dtype=bool)
        is_open[open_rows(table)] = True
        need = np.flatnonzero(is_open | column(table, "_audit").astype(bool))
        cols: dict[str, Any] = {}
        if need.size:
            answers = stage_answers(self.stage, items_of(table, need))
            paid = self.stage.cost.cost(answers)
            got = np.array(answers.labels, dtype=object)
            label = np.array(column(table, "label"), dtype=object)
            stage = np.array(column(table, "stage"), dtype=object)
            conf = column(table, "confidence").astype(float)
            cheap = np.array(column(table, "cheap_label"), dtype=object)
            expert = np.array(column(table, "expert_label"), dtype=object)
            audited = column(table, "audited").astype(bool)
            cost = column(table, "cost").astype(float)
            xcost = column(table, "_xcost").astype(float)
            cost[need] += paid
            xcost[need] = paid
            expert[need] = got
            aud = ~is_open[need]
            audited[need[aud]] = True
            cheap[need[aud]] = label[need[aud]]
            # the expert's label is the output where it answered, and where an audit got one
            out = ~aud | (got != None)  # noqa: E711
            label[need[out]] = got[out]
            stage[need[out]] = EXPERT_STAGE
            conf[need[out]] = 1.0
            cols = {
                "label": label, "stage": stage, "confidence": conf, "cheap_label": cheap,
                "expert_label": expert, "audited": audited, "cost": cost, "_xcost": xcost,
            }  # fmt: skip
        if self.is_column:
            good = np.flatnonzero(column(table, "reject") == None)  # noqa: E711
            truth = np.full(table.num_rows, None, dtype=object)
            truth[good] = self.stage.model.predict(items_of(table, good)).labels
            cols["_truth"] = truth
        return with_columns(table, cols).select(list(FINAL))


__all__ = ["CheapStep", "ExpertStep", "StepSpec", "audit_draws", "freeze", "frozen_threshold"]
