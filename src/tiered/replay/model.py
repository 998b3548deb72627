"""``Replay``: a model that answers from a replay log, so any cascade can be evaluated offline.

Cascade file form::

    model: {kind: replay, model: llama3.1-8b}                  # log from the BuildContext
    model: {kind: replay, model: llama3.1-8b, log: train.jsonl}  # or from a file

The log in ``BuildContext.resources["replay_log"]`` (a :class:`ReplayLog` or a path) wins
over ``log:``, so ``tiered eval cascade.yaml test.jsonl`` evaluates a cascade calibrated on
another log. A relative ``log:`` resolves against the cascade file's folder.

Answers carry everything the log recorded: the answer text, cost, latency, quality,
tokens, signals and samples. Two replay-specific choices:

- A query lacking this model's output answers ``None`` (never accepted by a rule, so it is
  passed on; the last stage must answer it and it counts as wrong) at the model's mean cost.
- A recorded output whose answer text was not kept (``answer: null`` with a known
  ``correct``) answers a placeholder naming the model: the answer existed, so rules may
  accept it, but it never equals another model's answer (agreement cannot be judged).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import ConfigError
from tiered.replay.load import load_replay
from tiered.replay.log import ReplayLog

if TYPE_CHECKING:
    from tiered.checks import ModelCase

_item_id = attrgetter("id")


def _example_log(n: int = 30) -> ReplayLog:
    """Two models' made-up outputs; the first lacks an output for one query."""
    rng = np.random.default_rng(0)
    present = np.ones((n, 2), dtype=bool)
    present[3, 0] = False
    answers = np.array([[str(x) for x in rng.choice(["A", "B"], 2)] for _ in range(n)], object)
    answers[3, 0] = None
    return ReplayLog(
        ids=[f"q{i}" for i in range(n)],
        models=["small", "big"],
        present=present,
        quality=rng.integers(0, 2, size=(n, 2)).astype(float),
        cost=np.tile([1e-5, 1e-3], (n, 1)),
        latency_ms=np.tile([20.0, 300.0], (n, 1)),
        answers=answers,
        signals={"logprob": -rng.exponential(0.3, size=(n, 2))},
        inputs=[f"question {i}?" for i in range(n)],
    )


def unrecorded_answer(model: str) -> str:
    """The placeholder label of a recorded output whose answer text the log lacks."""
    return f"<answer of {model} not recorded>"


class Replay:
    """Answers items by id from one model's column of a replay log."""

    tags = ModelTags(generates_text=True)

    @classmethod
    def contract_case(cls) -> ModelCase:
        """How the contract checks (:mod:`tiered.checks`) build this model: a replay of a
        small made-up log, asked about ids the log recorded."""
        from tiered.checks import ModelCase

        log = _example_log()

        def items(n: int, seed: int, classes: Sequence[str]) -> list[Item]:
            return [Item(id=log.ids[(seed + i) % len(log)], input=log.inputs[0]) for i in range(n)]

        spec = {"kind": "replay", "model": log.models[0]}
        return ModelCase.from_spec(spec, {"replay_log": log}, make_items=items)

    def __init__(self, log: ReplayLog, model: str, *, name: str | None = None) -> None:
        self.log = log
        self.model = model
        self.name = name or model
        j = log.model_index(model)
        self.column = j
        present = log.present[:, j]
        labels = np.array(log.answers[:, j], dtype=object)
        unrecorded = np.fromiter((x is None for x in labels), dtype=bool, count=len(labels))
        labels[present & unrecorded] = unrecorded_answer(model)
        labels[~present] = None
        self._labels = labels
        self._cost = np.ascontiguousarray(log.cost[:, j])
        self._latency = np.ascontiguousarray(log.latency_ms[:, j])
        self._quality = np.ascontiguousarray(log.quality[:, j])
        # only signals this model carries: a rule asking for another gets a clear error
        self._signals = {
            k: np.ascontiguousarray(v[:, j])
            for k, v in log.signals.items()
            if not np.isnan(v[:, j]).all()
        }
        self._tokens_in = None if log.tokens_in is None else log.tokens_in[:, j].copy()
        self._tokens_out = None if log.tokens_out is None else log.tokens_out[:, j].copy()
        samples = None if log.samples is None else log.samples[:, j]
        # a model that never recorded samples has none, so a vote rule says so clearly
        has_samples = samples is not None and any(x is not None for x in samples.tolist())
        self._samples = samples if has_samples else None

    def __repr__(self) -> str:
        return f"Replay(model={self.model!r}, log={self.log.path!r}, n={len(self.log)})"

    def available_signals(self) -> list[str]:
        """Signals this model's answers carry (``vote`` too when it recorded samples)."""
        have = set(self._signals)
        if self._samples is not None:
            have.add("vote")
        return sorted(have)

    def rows(self, items: Sequence[Item]) -> np.ndarray:
        """Log rows of ``items`` (by id); an id not in the log is a DataError naming it."""
        return self.log.rows_for(list(map(_item_id, items)))

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        idx = self.rows(items)

        def col(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        samples = None
        if self._samples is not None:
            samples = [s if s is not None else [] for s in self._samples[idx].tolist()]
        return AnswerBatch(
            labels=self._labels[idx].tolist(),
            cost=self._cost[idx],
            latency_ms=self._latency[idx],
            signals={k: v[idx] for k, v in self._signals.items()},
            samples=samples,
            quality=self._quality[idx],
            tokens_in=col(self._tokens_in),
            tokens_out=col(self._tokens_out),
        )


def replay_items(log: ReplayLog) -> list[Item]:
    """The log's queries as items (id, input; ``task`` and ``reference`` in ``fields``)."""
    tasks = log.tasks or [None] * len(log)
    inputs = log.inputs or [""] * len(log)
    refs = log.references or [None] * len(log)
    return [
        Item(id=i, input=x if x is not None else "", fields={"task": t, "reference": r})
        for i, x, t, r in zip(log.ids, inputs, tasks, refs, strict=True)
    ]


def _resolve_log(spec: dict[str, Any], ctx: BuildContext) -> ReplayLog:
    given = ctx.resources.get("replay_log")
    if isinstance(given, ReplayLog):
        return given
    source = given if given is not None else spec.get("log")
    if source is None:
        raise ConfigError(
            "a replay model needs a log: give 'log: path' in its spec, or pass the log "
            "(tiered eval CASCADE LOG)",
            field="model.log",
        )
    path = Path(source)
    if not path.is_absolute():
        path = ctx.base_dir / path
    key = f"replay_log:{path.resolve()}"
    cached = ctx.resources.get(key)
    if cached is None:
        # cached per file so that five stages on one log read it once
        cached = ctx.resources[key] = load_replay(path)
    return cached  # type: ignore[no-any-return]


@register_model("replay")
def build_replay(spec: dict[str, Any], ctx: BuildContext) -> Replay:
    """Build a :class:`Replay` from ``{kind: replay, model: NAME[, log: PATH][, name: ...]}``."""
    unknown = sorted(set(spec) - {"kind", "model", "log", "name"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} for a replay model; it takes: model, log, name",
            field=f"model.{unknown[0]}",
        )
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(
            f"a replay model needs 'model': the model's name in the log. Got {model!r} instead",
            field="model.model",
        )
    log = _resolve_log(spec, ctx)
    try:
        return Replay(log, model, name=spec.get("name"))
    except ConfigError as exc:
        raise ConfigError(exc.reason, field="model.model") from exc


__all__ = ["Replay", "build_replay", "replay_items", "unrecorded_answer"]
