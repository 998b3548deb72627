"""Deferral rules and gates driven by a quality estimator (they serialize in cascade files).

```yaml
stages:
  - name: mixtral-8x7b-instruct
    model: {kind: replay, model: mixtral-8x7b-instruct}
    gate: {kind: exante_gate, estimator: cascade.estimator.json, threshold: 0.35}
    rule: {kind: scorer, estimator: cascade.estimator.json, threshold: 0.62}
  - name: gpt-4-1106-preview
    model: {kind: replay, model: gpt-4-1106-preview}
```

- ``scorer`` (FrugalGPT): accept when the post-hoc P(correct | query, answer, earlier
  answers) is at least ``threshold``.
- ``exante_gate`` (a pre-generation router, as a stage's ``gate``): the stage runs only
  for items whose ex-ante P(correct | query) is at least ``threshold``; the others skip it
  (not run, not charged), going to the next stage or, with ``on_reject: last``, straight
  to the last one.
- ``cascade_route`` (Dekoninck et al.): the same rule as every stage's ``gate`` and
  ``rule``; see :mod:`tiered.calibrate.learned.policy`.

``estimator`` is the path of a saved :class:`~tiered.calibrate.learned.estimator.QualityEstimator`,
relative to the cascade file; building the cascade loads it once for all stages. In code,
``rule.with_estimator(est)`` binds an estimator object directly.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, PrivateAttr

from tiered.calibrate.learned.estimator import QualityEstimator
from tiered.calibrate.learned.policy import Router
from tiered.core.answers import AnswerBatch
from tiered.core.rules import DeferralRule, RuleContext
from tiered.errors import ConfigError


@functools.cache
def _example_estimator() -> QualityEstimator:
    """A small estimator for the contract checks' stages (:mod:`tiered.checks.rules`: the
    checked stage and an earlier one), fitted on a synthetic log where the earlier stage is
    right when the query mentions an apple."""
    from tiered.checks.rules import CHECKED_STAGE, EARLIER_STAGE, sample_items
    from tiered.replay.log import ReplayLog

    n = 120
    items = sample_items(n, seed=99)
    rng = np.random.default_rng(99)
    easy = np.array(["apple" in it.text for it in items])
    quality = np.column_stack([easy | (rng.random(n) < 0.2), rng.random(n) < 0.85])
    answers = np.array([[str(x) for x in rng.choice(["a", "b", "c"], size=2)] for _ in range(n)])
    log = ReplayLog(
        ids=[it.id for it in items],
        models=[EARLIER_STAGE, CHECKED_STAGE],
        present=np.ones((n, 2), dtype=bool),
        quality=quality.astype(float),
        cost=np.column_stack([np.full(n, 1e-4), np.full(n, 1e-3)]),
        latency_ms=np.full((n, 2), 10.0),
        answers=answers.astype(object),
        tasks=[None] * n,
        inputs=[it.text for it in items],
        references=[None] * n,
    )
    return QualityEstimator(folds=2, alphas=(1e-3,)).fit(log)


def load_estimator(path: str | Path, resources: dict[str, Any] | None = None) -> QualityEstimator:
    """Load a saved estimator once per build (cached in ``resources`` by resolved path)."""
    p = Path(path).resolve()
    key = f"routing.estimator:{p}"
    if resources is not None and key in resources:
        return resources[key]  # type: ignore[no-any-return]
    est = QualityEstimator.load(p)
    if resources is not None:
        resources[key] = est
    return est


class EstimatorRule(DeferralRule):
    """Base of rules that read a quality estimator (no ``kind``: not a rule by itself)."""

    estimator: str | None = None  # saved estimator, relative to the cascade file
    _est: QualityEstimator | None = PrivateAttr(default=None)

    def with_estimator(self, est: QualityEstimator) -> Self:
        """A copy of this rule that uses ``est`` (the ``estimator`` path is kept for saving)."""
        bound = self.model_copy()
        bound._est = est
        return bound

    def bind(self, ctx: Any) -> Any:
        """Load ``estimator`` relative to the cascade file's folder (``BuildContext``)."""
        if self._est is not None or self.estimator is None:
            return self
        path = Path(self.estimator)
        if not path.is_absolute():
            path = Path(ctx.base_dir) / path
        return self.with_estimator(load_estimator(path, ctx.resources))

    def externalise(self, path: Path, saved: dict[int, str]) -> Any:
        """Save the bound estimator next to the cascade file ``path``; refer to it by name."""
        est = self._est
        if est is None:
            return self
        name = saved.get(id(est))
        if name is None:
            suffix = "" if not saved else f"-{len(saved) + 1}"
            name = f"{path.stem}{suffix}.estimator.json"  # and its .npz
            est.save(path.parent / name)
            saved[id(est)] = name
        bound = self.model_copy(update={"estimator": name})
        bound._est = est
        return bound

    @property
    def est(self) -> QualityEstimator:
        if self._est is None:
            if self.estimator is None:
                raise ConfigError(
                    f"rule '{self.kind}' has no quality estimator: give 'estimator: PATH' "
                    "or bind one with rule.with_estimator(est)",
                    field="rule.estimator",
                )
            self._est = load_estimator(self.estimator)
        return self._est


class ScorerThreshold(EstimatorRule):
    """Accept when the post-hoc P(correct) is at least ``threshold`` (FrugalGPT's scorer)."""

    kind: Literal["scorer"] = "scorer"
    model: str | None = None  # the estimator's model for this stage (default: stage name)
    threshold: float = Field(ge=0.0, le=1.0)

    def scores(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return self.est.posthoc(ctx.items, self.model or ctx.stage_name, answers, ctx.earlier)

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return self.scores(answers, ctx) >= self.threshold

    def signals_needed(self) -> set[str]:
        return set()

    def describe(self) -> str:
        return f"scorer P(correct | answer) >= {self.threshold:.4g}"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(threshold=0.5).with_estimator(_example_estimator())]


class ExAnteGate(EstimatorRule):
    """Run the stage only where the ex-ante P(correct | query) is at least ``threshold``."""

    kind: Literal["exante_gate"] = "exante_gate"
    model: str | None = None
    threshold: float = Field(ge=0.0, le=1.0)
    on_reject: Literal["next", "last"] = "next"

    def scores(self, ctx: RuleContext) -> np.ndarray:
        est = self.est
        return est.exante(ctx.items)[:, est.index(self.model or ctx.stage_name)]

    def admit(self, ctx: RuleContext) -> np.ndarray:
        return self.scores(ctx) >= self.threshold

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        # as a plain rule: trust the answer where the query looked easy for this model
        return self.admit(ctx)

    def describe(self) -> str:
        to = ", else to the last stage" if self.on_reject == "last" else ""
        return f"P(correct | query) >= {self.threshold:.4g}{to}"

    @classmethod
    def examples(cls) -> list[Self]:
        est = _example_estimator()
        return [
            cls(threshold=0.5).with_estimator(est),
            cls(threshold=0.3, on_reject="last").with_estimator(est),
        ]


class CascadeRoute(EstimatorRule):
    """Cascade routing: as ``gate``, run this stage only if it is the best next step; as
    ``rule``, stop unless going on is worth its cost (``lam`` USD⁻¹ of quality)."""

    kind: Literal["cascade_route"] = "cascade_route"
    models: list[str] = Field(min_length=1)  # the estimator's model for each stage, in order
    lam: float = Field(ge=0.0)
    lookahead: bool = True
    on_reject: Literal["next"] = "next"
    _router: Router | None = PrivateAttr(default=None)

    def router(self) -> Router:
        est = self.est
        r = self._router
        if r is None or r.estimator is not est:
            r = self._router = Router(est, list(self.models), self.lam, self.lookahead)
        return r

    def _check(self, ctx: RuleContext) -> None:
        if ctx.stage_index >= len(self.models):
            raise ConfigError(
                f"cascade_route of stage '{ctx.stage_name}' (stage {ctx.stage_index}) lists "
                f"only {len(self.models)} models",
                field="rule.models",
            )

    def admit(self, ctx: RuleContext) -> np.ndarray:
        self._check(ctx)
        return self.router().admit(ctx.items, ctx.stage_index)

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        self._check(ctx)
        # earlier stages are in order: name them by the estimator's models
        earlier = {self.models[i]: labels for i, labels in enumerate(ctx.earlier.values())}
        return self.router().accept(ctx.items, ctx.stage_index, answers, earlier)

    def describe(self) -> str:
        return f"cascade routing, λ={self.lam:.4g}/USD"

    @classmethod
    def examples(cls) -> list[Self]:
        from tiered.checks.rules import CHECKED_STAGE, EARLIER_STAGE

        rule = cls(models=[EARLIER_STAGE, CHECKED_STAGE], lam=100.0)
        return [rule.with_estimator(_example_estimator())]


__all__ = ["CascadeRoute", "EstimatorRule", "ExAnteGate", "ScorerThreshold", "load_estimator"]
