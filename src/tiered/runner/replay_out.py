"""Replay-log records from a run (``--replay-out``), for ``tiered calibrate`` later.

Every cheap stage's answers are read *before* the cascade learns from the batch, so the
log records what each stage would have said when the item came, as a real deployment
would have seen it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tiered.config.run import EXPERT_STAGE

if TYPE_CHECKING:
    from tiered.core.answers import AnswerBatch
    from tiered.core.cascade import Stage
    from tiered.core.items import Item
    from tiered.online.decisions import OnlineDecision

CheapAnswers = list[tuple[str, "AnswerBatch", np.ndarray]]


def cheap_answers(stages: Sequence[Stage], items: Sequence[Item]) -> CheapAnswers:
    """(name, answers, cost per item) of every cheap stage for ``items``."""
    out: CheapAnswers = []
    for s in stages:
        answers = s.model.predict(items)
        out.append((s.name, answers, np.asarray(s.cost.cost(answers), dtype=float)))
    return out


def replay_records(
    items: Sequence[Item],
    gold: Sequence[str | None],
    decisions: Sequence[OnlineDecision],
    cheap: CheapAnswers,
    truth: Sequence[str | None] | None,
    truth_cost: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Replay-log records (see ``tiered.replay.load``) for items whose expert label is known.

    The reference is the expert's label, so ``correct`` means "agrees with the expert"
    (the quality ``target_agreement`` speaks of). Items the expert never saw have no
    reference and are left out; ``via`` says how the reference came: ``expert`` (it
    answered), ``audit`` (a random audit: an unbiased sample) or ``column`` (read free
    from the input).
    """
    from tiered.core.signals import available_signals, read_signal

    sig: list[dict[str, np.ndarray]] = []
    for _, answers, _ in cheap:
        # a model that has seen no label yet may answer with zero classes
        no_classes = answers.probs is not None and answers.probs.shape[1] == 0
        names = [] if no_classes else available_signals(answers)
        sig.append({n: read_signal(answers, n) for n in names})
    cheap_cost = np.sum([c for _, _, c in cheap], axis=0)
    out = []
    for i, (it, d) in enumerate(zip(items, decisions, strict=True)):
        ref = d.expert_label
        via = "audit" if d.audited else "expert"
        if ref is None and truth is not None and truth[i] is not None:
            ref, via = truth[i], "column"
        if ref is None:
            continue
        outputs: dict[str, Any] = {}
        for (name, answers, cost), s in zip(cheap, sig, strict=True):
            o: dict[str, Any] = {
                "answer": answers.labels[i],
                "correct": answers.labels[i] == ref,
                "cost": float(cost[i]),
            }
            for k, v in s.items():
                if not math.isnan(v[i]):
                    o[k] = float(v[i])
            outputs[name] = o
        if truth_cost is not None:  # a label column: what its stage charges per call
            expert_cost = float(truth_cost[i])
        else:  # what the item cost beyond the cheap stages
            expert_cost = max(float(d.cost) - float(cheap_cost[i]), 0.0)
        outputs[EXPERT_STAGE] = {"answer": ref, "correct": True, "cost": expert_cost}
        rec: dict[str, Any] = {"id": it.id, "input": it.text, "reference": ref, "via": via}
        if gold[i] is not None:
            rec["gold"] = gold[i]
        rec["outputs"] = outputs
        out.append(rec)
    return out


__all__ = ["CheapAnswers", "cheap_answers", "replay_records"]
