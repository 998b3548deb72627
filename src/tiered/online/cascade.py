"""Online cascade learning over a stream: cheap stages learn from the expert as it answers.

For each batch of items (batch-first throughout):

1. **Who must go up anyway.** Items of the warm-up (the first ``warmup`` items of the
   stream) and, after it, each item ``n`` with probability ``beta**n`` (exploration)
   are sent to the expert whatever the cheap stages say.
2. **Cheap stages, cheapest first,** each answer the items still open (and the items
   going up anyway, so their heads see unbiased examples). A stage's deferral head turns
   its answer into P(agrees with the expert); the stage answers the open items whose
   P(correct) reaches the controller's threshold, the rest go on.
3. **Audits.** Each item a cheap stage answered is audited with probability
   ``audit_rate``: the expert is asked too, and its label is the output (it is paid
   for); the audit records whether the cheap label agreed with it, which is what
   measures the cheap stages (see :mod:`tiered.online.audit`).
4. **One expert call per batch,** on deferred, warm-up, exploration and audited items.
5. **Learning.** Every expert label trains each cheap stage's deferral head (was the
   stage right?) and goes to the label buffer; every ``refit_every`` new labels, each
   learnable stage ``learn``\\ s on the new labels plus a replay sample.
6. **Control.** The audit meter updates the agreement estimate; the controller sets the
   threshold for the next batch (see :mod:`tiered.online.controller`).

Costs are cumulative: an item pays every cheap stage that ran on it, plus the expert if
it was called (deferred, explored or audited).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.core.cascade import Stage
from tiered.core.items import Item, as_items
from tiered.core.model import AsyncModel, LearnableModel
from tiered.errors import ConfigError, ModelError
from tiered.online.audit import AgreementMeter
from tiered.online.cascade_state import cascade_state, load_cascade_state
from tiered.online.config import OnlineConfig
from tiered.online.confseq import AgreementBounds, agreement_bounds
from tiered.online.controller import ThresholdController
from tiered.online.decisions import OnlineDecision, OnlineStats
from tiered.online.head import (
    N_FEATURES,
    AccuracyTracker,
    DeferralHead,
    head_features,
    learn_agreement,
    max_prob_from_features,
)
from tiered.online.label_buffer import LabelBuffer


class StreamShare(Protocol):
    """Other cascades answering the same stream (the workers of a fleet, see
    :mod:`tiered.online.fleet`): warm-up and exploration count every worker's items, and
    expert labels go both ways between batches."""

    def claim(self, n: int) -> int:
        """The stream position of the first of the next ``n`` items (after learning the
        labels the others published since the last call)."""
        ...

    def shared(
        self, items: Sequence[Item], decisions: Sequence[OnlineDecision], weights: np.ndarray
    ) -> None:
        """A batch just answered: its expert labels, each with its inverse probability
        of having been asked for (``weights``), are for the others to learn."""
        ...


@dataclass
class _Plan:
    """A batch between the cheap stages and the expert's answers."""

    items: list[Item]
    forced: np.ndarray  # warm-up or exploration
    answered_by: np.ndarray  # stage index; n_cheap = expert
    labels: np.ndarray  # object: the accepted cheap label (None: left to the expert)
    confidence: np.ndarray  # the accepting head's P(correct); 1.0 left to the expert
    cost: np.ndarray
    scores: np.ndarray  # (n, n_cheap) P(correct), NaN where the stage did not run
    stage_labels: list[np.ndarray]  # per stage, object array of its labels (None: no answer)
    features: list[np.ndarray]  # per stage, (n, d) head features (rows where it ran)
    reached: list[np.ndarray]  # per stage, bool: no earlier stage would have answered
    audited: np.ndarray
    expert_idx: np.ndarray
    label_weight: np.ndarray  # inverse probability of getting an expert label


class OnlineCascade:
    """Cheap learnable stages in front of an expert, learning online from its answers.

    ``cheap`` stages run cheapest first; their models should offer ``probs``/``classes``
    and ``learn(items, labels)`` (a stage whose model cannot learn still gets a deferral
    head). ``expert`` is any :class:`~tiered.core.Stage`; its model is called once per
    batch (``predict``; :meth:`aprocess` awaits ``apredict`` when the model has it).
    ``stage.cost`` prices each call. Deferral rules of the stages are not used: the
    learned heads and the controller decide.
    """

    def __init__(
        self,
        cheap: Sequence[Stage],
        expert: Stage,
        config: OnlineConfig | None = None,
        seed: int | None = None,
    ) -> None:
        if not cheap:
            raise ConfigError("an online cascade needs at least one cheap stage", field="cheap")
        names = [s.name for s in cheap] + [expert.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"stage names must be unique; repeated: {dupes}", field="stages")
        self.cheap = list(cheap)
        self.expert = expert
        self.config = config or OnlineConfig()
        cfg = self.config
        self.seed = cfg.seed if seed is None else seed
        self.rng = np.random.default_rng(self.seed)
        k = len(self.cheap)
        self.trackers = [AccuracyTracker(cfg.accuracy_halflife) for _ in range(k)]
        self.heads = [
            DeferralHead(cfg.head_buffer, cfg.head_l2, cfg.head_min_examples, cfg.head_halflife)
            for _ in range(k)
        ]
        self.replay = LabelBuffer(cfg.replay_size)
        self.pending_items: list[Item] = []
        self.pending_labels: list[str] = []
        self.controller = ThresholdController(cfg, k)
        self.meter = AgreementMeter(k + 1, cfg.window)
        self.n_items = 0
        self.usd_spent = 0.0
        self.expert_usd = 0.0
        self.expert_calls = 0
        self.explored = 0
        self.labels_learned = 0
        self.refits = 0
        self.history: list[dict[str, Any]] = []
        self._since_history = 0
        # set by a fleet: positions in the stream then count the other workers' items too
        self.share: StreamShare | None = None
        self._claimed_to = 0  # the position after the last batch claimed from the share

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.cheap] + [self.expert.name]

    # ------------------------------------------------------------------ the loop

    def process(self, items: Sequence[Item | str]) -> list[OnlineDecision]:
        """Answer ``items`` in stream order, learning as it goes (one expert call a batch)."""
        out: list[OnlineDecision] = []
        for chunk, start in self._chunks(as_items(items)):
            plan = self._plan(chunk, start)
            answers = self._call_expert_sync(plan)
            out.extend(self._finished(plan, answers))
        return out

    async def aprocess(self, items: Sequence[Item | str]) -> list[OnlineDecision]:
        """As :meth:`process`, awaiting the expert's ``apredict`` when it has one."""
        out: list[OnlineDecision] = []
        for chunk, start in self._chunks(as_items(items)):
            plan = self._plan(chunk, start)
            batch = [plan.items[i] for i in plan.expert_idx.tolist()]
            expert = self.expert.model
            if not batch:
                answers = AnswerBatch.empty()
            elif isinstance(expert, AsyncModel):
                answers = await expert.apredict(batch)
            else:
                answers = self.expert.model.predict(batch)
            out.extend(self._finished(plan, answers))
        return out

    @property
    def position(self) -> int:
        """The stream position of the next item: items answered so far, by this cascade
        or, with a :class:`StreamShare`, by the whole fleet (as of the last batch)."""
        return self.n_items if self.share is None else self._claimed_to

    def _chunks(self, items: list[Item]) -> Iterator[tuple[list[Item], int]]:
        """Batches, each with its first item's stream position; during warm-up, batches
        of ``refit_every`` so the stages learn (and their heads see predictions) before
        the warm-up ends."""
        cfg = self.config
        i = 0
        while i < len(items):
            n = self.position
            if n < cfg.warmup:
                size = min(cfg.warmup - n, max(cfg.refit_every, 1), cfg.batch_size)
            else:
                size = cfg.batch_size
            chunk = items[i : i + size]
            if self.share is not None:
                n = self.share.claim(len(chunk))
                self._claimed_to = n + len(chunk)
            yield chunk, n
            i += size

    def _finished(self, plan: _Plan, answers: AnswerBatch) -> list[OnlineDecision]:
        decisions = self._finish(plan, answers)
        if self.share is not None:
            self.share.shared(plan.items, decisions, plan.label_weight)
        return decisions

    def _call_expert_sync(self, plan: _Plan) -> AnswerBatch:
        if plan.expert_idx.size == 0:
            return AnswerBatch.empty()
        return self.expert.model.predict([plan.items[i] for i in plan.expert_idx.tolist()])

    def exploration_rate(self, n: int | None = None) -> float:
        """P(item ``n`` of the stream is sent up anyway, once past the warm-up):
        ``max(beta**n, exploration_min)``."""
        n = self.position if n is None else n
        cfg = self.config
        return float(max(cfg.exploration_beta**n, cfg.exploration_min))

    def _plan(self, items: list[Item], start: int) -> _Plan:
        cfg = self.config
        m = len(items)
        k_cheap = len(self.cheap)
        pos = start + np.arange(m)
        warm = pos < cfg.warmup
        rate = np.maximum(cfg.exploration_beta ** pos.astype(float), cfg.exploration_min)
        explore = ~warm & (self.rng.random(m) < rate)
        forced = warm | explore
        open_ = np.ones(m, dtype=bool)
        answered_by = np.full(m, k_cheap, dtype=np.int64)
        labels = np.full(m, None, dtype=object)
        confidence = np.ones(m)
        cost = np.zeros(m)
        scores = np.full((m, k_cheap), np.nan)
        stage_labels = [np.full(m, None, dtype=object) for _ in range(k_cheap)]
        features: list[np.ndarray] = []
        threshold = self.controller.threshold
        would = np.zeros(m, dtype=bool)  # some cheap stage would answer (forced or not)
        reached: list[np.ndarray] = []
        for k, stage in enumerate(self.cheap):
            reached.append(~would)
            idx = np.flatnonzero(open_ | forced)
            feats = np.zeros((m, 0))
            if idx.size:
                answers = stage.model.predict([items[i] for i in idx.tolist()])
                if len(answers) != idx.size:
                    raise ModelError(
                        f"model of stage '{stage.name}' returned {len(answers)} answers "
                        f"for {idx.size} items"
                    )
                cost[idx] += stage.cost.cost(answers)
                x = head_features(answers, self.trackers[k])
                feats = np.zeros((m, x.shape[1]))
                feats[idx] = x
                ok = answers.answered
                p = np.where(ok, self._score(k, answers, x), 0.0)
                scores[idx, k] = p
                stage_labels[k][idx] = answers.labels
                sure = ok & (p >= threshold)
                would[idx[sure]] = True
                accept = sure & open_[idx] & ~forced[idx]
                take = idx[accept]
                answered_by[take] = k
                labels[take] = stage_labels[k][take]
                confidence[take] = p[accept]
                open_[take] = False
            features.append(feats)
        cheap_done = ~open_
        audited = cheap_done & (self.rng.random(m) < cfg.audit_rate)
        self._apply_cap(
            forced & ~warm, warm, open_, audited, scores, stage_labels, answered_by, labels,
            confidence,
        )  # fmt: skip
        expert_idx = np.flatnonzero((answered_by == k_cheap) | audited)
        # Items a cheap stage would answer reach the expert only by exploration or audit.
        p_label = rate + (1.0 - rate) * cfg.audit_rate
        label_weight = np.where(
            would & ~warm, np.minimum(1.0 / np.maximum(p_label, 1e-9), cfg.head_max_weight), 1.0
        )
        return _Plan(
            items=items,
            forced=forced & (answered_by == k_cheap),
            answered_by=answered_by,
            labels=labels,
            confidence=np.where(answered_by == k_cheap, 1.0, confidence),
            cost=cost,
            scores=scores,
            stage_labels=stage_labels,
            features=features,
            reached=reached,
            audited=audited,
            expert_idx=expert_idx,
            label_weight=label_weight,
        )

    def _score(self, k: int, answers: AnswerBatch, x: np.ndarray) -> np.ndarray:
        """P(stage k agrees with the expert): its head, or its raw top probability."""
        if self.config.deferral_signal == "max_prob":
            if answers.probs is None or answers.probs.shape[1] == 0:
                return np.zeros(len(answers))
            return answers.probs.max(axis=1)
        return self.heads[k].predict(x)

    def _scorers(self) -> list[Callable[[np.ndarray], np.ndarray]]:
        """Per stage, head features -> P(correct), as :meth:`_score` computes it."""
        if self.config.deferral_signal == "max_prob":
            return [max_prob_from_features] * len(self.cheap)
        return [h.predict for h in self.heads]

    def _apply_cap(
        self,
        explored: np.ndarray,
        warm: np.ndarray,
        open_: np.ndarray,
        audited: np.ndarray,
        scores: np.ndarray,
        stage_labels: list[np.ndarray],
        answered_by: np.ndarray,
        labels: np.ndarray,
        confidence: np.ndarray,
    ) -> None:
        """Keep the cumulative expert share under ``max_expert_share`` (after warm-up).

        Over the cap, exploration goes first, then the deferred items a cheap stage is
        surest about (answered by that stage), then audits. Items no cheap stage could
        answer, and warm-up items, always go up.
        """
        cap = self.config.max_expert_share
        if cap is None:
            return
        m = len(open_)
        allowed = math.floor(cap * (self.n_items + m)) - self.expert_calls
        planned = int(open_.sum() + audited.sum())
        excess = planned - max(allowed, 0)
        if excess <= 0:
            return
        s = np.nan_to_num(scores, nan=-1.0)
        has_label = np.stack([lab != None for lab in stage_labels], axis=1)  # noqa: E711
        s = np.where(has_label, s, -1.0)
        best_stage = s.argmax(axis=1)
        best = s.max(axis=1)
        droppable = open_ & has_label.any(axis=1) & ~warm
        # Exploration first, then surest deferrals; audits last.
        order = np.lexsort((-best, ~explored))
        drops = [i for i in order.tolist() if droppable[i]][:excess]
        for i in drops:
            k = int(best_stage[i])
            answered_by[i] = k
            labels[i] = stage_labels[k][i]
            confidence[i] = best[i]
            open_[i] = False
        excess -= len(drops)
        if excess > 0:
            aud = np.flatnonzero(audited)[:excess]
            audited[aud] = False

    def _finish(self, plan: _Plan, answers: AnswerBatch) -> list[OnlineDecision]:
        cfg = self.config
        k_cheap = len(self.cheap)
        m = len(plan.items)
        e_idx = plan.expert_idx
        if len(answers) != e_idx.size:
            raise ModelError(
                f"expert '{self.expert.name}' returned {len(answers)} answers "
                f"for {e_idx.size} items"
            )
        expert_labels = np.full(m, None, dtype=object)
        called = np.zeros(m, dtype=bool)
        cost = plan.cost
        if e_idx.size:
            expert_labels[e_idx] = answers.labels
            called[e_idx] = True
            paid = self.expert.cost.cost(answers)
            cost[e_idx] += paid
            self.expert_usd += float(paid.sum())
        by_expert = plan.answered_by == k_cheap
        cheap_labels = plan.labels  # the cheap answers (None where the expert answers)
        got = called & (expert_labels != None)  # noqa: E711
        # An audit counts when the expert gave a label to compare with.
        audit_ok = plan.audited & got
        agree = audit_ok & (cheap_labels == expert_labels)
        # The output: the expert's label wherever it answered or an audit got its label
        # (it is paid for); an audit that got no label leaves the cheap answer.
        to_expert = by_expert | audit_ok
        labels = np.where(to_expert, expert_labels, cheap_labels)
        out_stage = np.where(to_expert, k_cheap, plan.answered_by)
        conf = np.where(to_expert, 1.0, plan.confidence)
        # Learn from every item with an expert label.
        rows = np.flatnonzero(got)
        if rows.size:
            self._learn_heads(plan, rows, expert_labels)
            self._queue_labels([plan.items[i] for i in rows.tolist()], expert_labels[rows].tolist())
        # Estimates and control.
        self.controller.observe(self._window_features(plan))
        aud = np.flatnonzero(audit_ok)
        if aud.size:
            # The audits measure the cheap stages: their heads' P(correct), not the output's.
            self.controller.observe_audits(plan.confidence[aud], agree[aud].astype(float))
        # The meter counts whose label was output (audited items under the expert).
        self.meter.add(out_stage, audit_ok, agree, called)
        self.n_items += m
        self.expert_calls += int(called.sum())
        self.explored += int(plan.forced.sum())
        self.usd_spent += float(cost.sum())
        self.controller.update(
            self.meter.cumulative(cfg.confidence, cfg.ci_method),
            self._scorers(),
            self.meter.windowed(cfg.confidence, cfg.ci_method),
        )
        self._since_history += m
        if cfg.history_every == 0 or self._since_history >= cfg.history_every:
            self._record_history()
        names = self.stage_names
        audited = plan.audited.tolist()
        cheap_by = plan.answered_by.tolist()
        return [
            OnlineDecision(
                id=plan.items[i].id,
                label=labels[i],
                stage=names[s],
                stage_index=s,
                confidence=float(conf[i]),
                cost=float(cost[i]),
                audited=audited[i],
                expert_label=expert_labels[i],
                explored=bool(plan.forced[i]),
                audited_stage=names[cheap_by[i]] if audited[i] else None,
                cheap_label=cheap_labels[i] if audited[i] else None,
            )
            for i, s in enumerate(out_stage.tolist())
        ]

    def _window_features(self, plan: _Plan) -> np.ndarray:
        """Head features ``(n, n_cheap, d)``, NaN where a stage gave no answer."""
        m = len(plan.items)
        out = np.full((m, len(self.cheap), N_FEATURES), np.nan)
        for k, feats in enumerate(plan.features):
            ran = plan.stage_labels[k] != None  # noqa: E711
            if feats.shape[1]:
                out[ran, k] = feats[ran]
        return out

    def _learn_heads(self, plan: _Plan, rows: np.ndarray, expert_labels: np.ndarray) -> None:
        for k in range(len(self.cheap)):
            # A head learns from the items its stage would be asked about: a later stage
            # also runs on warm-up and exploration items an earlier stage would have
            # answered, and those easy items would make its head trust it too much on
            # the hard ones it actually answers.
            ran = rows[(plan.stage_labels[k][rows] != None) & plan.reached[k][rows]]  # noqa: E711
            if ran.size == 0:
                continue
            learn_agreement(
                self.heads[k], self.trackers[k], plan.features[k][ran],
                plan.stage_labels[k][ran], expert_labels[ran], plan.label_weight[ran],
            )  # fmt: skip

    def learn_labels(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        """Expert labels got elsewhere (by another worker of a fleet): the cheap stages
        learn from them as from their own (the heads do not: see ``fleet.learn_heads``)."""
        self._queue_labels(list(items), list(labels))

    def _queue_labels(self, items: list[Item], labels: list[str]) -> None:
        self.pending_items.extend(items)
        self.pending_labels.extend(labels)
        self.labels_learned += len(items)
        if len(self.pending_items) < self.config.refit_every:
            return
        k = round(self.config.replay_ratio * len(self.pending_items))
        old_items, old_labels = self.replay.sample(k, self.rng)
        batch_items = self.pending_items + old_items
        batch_labels = self.pending_labels + old_labels
        for stage in self.cheap:
            if isinstance(stage.model, LearnableModel):
                stage.model.learn(batch_items, batch_labels)
        self.replay.add(self.pending_items, self.pending_labels)
        self.pending_items, self.pending_labels = [], []
        self.refits += 1

    # ------------------------------------------------------------------ reporting

    def thresholds(self) -> dict[str, float]:
        t = self.controller.threshold
        return {s.name: t for s in self.cheap}

    def stats(self) -> OnlineStats:
        cfg = self.config
        overall = self.meter.cumulative(cfg.confidence, cfg.ci_method)
        win = self.meter.windowed(cfg.confidence, cfg.ci_method)
        cs = self.confidence_sequence()
        n = self.n_items
        counts = self.meter.total_stage
        names = self.stage_names
        per_call = self.expert_usd / self.expert_calls if self.expert_calls else 0.0
        return OnlineStats(
            n_items=n,
            expert_calls=self.expert_calls,
            expert_share=self.expert_calls / n if n else 0.0,
            audits=overall.audits,
            audited_agreement=overall.agreement,
            ci_low=overall.low,
            ci_high=overall.high,
            cheap_agreement=overall.cheap_agreement,
            cheap_ci_low=overall.cheap_low,
            cheap_ci_high=overall.cheap_high,
            window_agreement=win.agreement,
            window_ci_low=win.low,
            window_ci_high=win.high,
            window_expert_share=self.meter.window_expert_share(),
            usd_spent=self.usd_spent,
            usd_expert_only=per_call * n,
            stage_answers={nm: int(c) for nm, c in zip(names, counts, strict=True)},
            # over the meter's items: a fleet's meter (tiered.online.fleet) counts every worker's
            stage_share={
                nm: int(c) / max(int(counts.sum()), 1) for nm, c in zip(names, counts, strict=True)
            },
            thresholds=self.thresholds(),
            target_agreement=cfg.target_agreement,
            required_agreement=self.controller.required,
            exploration_rate=self.exploration_rate(),
            explored=self.explored,
            labels_learned=self.labels_learned,
            refits=self.refits,
            confidence=cfg.confidence,
            ci_method=cfg.ci_method,
            cs_low=cs.low,
            cs_high=cs.high,
            below_target=self.controller.escalated,
            alarms=self.controller.alarms,
            first_alarm_at=self.controller.first_alarm_at,
        )

    def confidence_sequence(self) -> AgreementBounds:
        """The overall agreement's bounds, valid at every item (:mod:`tiered.online.confseq`)."""
        cfg = self.config
        m = self.meter
        known = self.controller.bounds
        if known is not None and known.n == m.n:
            return known  # the controller's, computed after the last batch
        n_expert = int(m.total_stage[-1])
        return agreement_bounds(
            m.n, m.n - n_expert, m.total_audits, m.total_agree, cfg.audit_rate,
            1.0 - cfg.confidence,
        )  # fmt: skip

    def _record_history(self) -> None:
        cfg = self.config
        overall = self.meter.cumulative(cfg.confidence, cfg.ci_method)
        win = self.meter.windowed(cfg.confidence, cfg.ci_method)
        cs = self.confidence_sequence()
        per_call = self.expert_usd / self.expert_calls if self.expert_calls else 0.0
        share = self.meter.window_stage_share()
        self.history.append(
            {
                "n": self.n_items,
                "expert_share": self.meter.window_expert_share(),
                "expert_share_total": self.expert_calls / self.n_items,
                "agreement": overall.agreement,
                "ci_low": overall.low,
                "ci_high": overall.high,
                "cs_low": cs.low,
                "cs_high": cs.high,
                "below_target": self.controller.escalated,
                "window_agreement": win.agreement,
                "window_ci_low": win.low,
                "window_ci_high": win.high,
                "cheap_agreement": win.cheap_agreement,
                "audits": overall.audits,
                "usd": self.usd_spent,
                "usd_expert_only": per_call * self.n_items,
                "threshold": self.controller.threshold,
                "required_agreement": self.controller.required,
                "stage_share": {
                    nm: float(s) for nm, s in zip(self.stage_names, share, strict=True)
                },
            }
        )
        self._since_history = 0

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the stream exactly, as plain data (a tree of
        JSON values and numpy arrays, see :mod:`tiered.store.state`).

        Cheap models that learn must offer ``state_dict()``/``load_state_dict()``; the
        expert's state (a response cache, say) is its own business.
        """
        return cascade_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a cascade built with the same stages."""
        load_cascade_state(self, state)


__all__ = ["OnlineCascade"]
