"""Online cascade learning: warm-up, exploration, audits, CIs, control, shift, state, cost.

The cheap stage is a small learnable naive Bayes and the expert a label column (both
below), so every test streams a few thousand synthetic items in well under a second.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tiered.core import AnswerBatch, FixedCost, Item, ModelTags, Stage
from tiered.errors import ConfigError, StoreError
from tiered.online import (
    OnlineCascade,
    OnlineConfig,
    OnlineDecision,
    ThresholdController,
    binomial_interval,
    clopper_pearson_interval,
    estimate_agreement,
    wilson_interval,
)
from tiered.store.state import decode_state, encode_state

# --------------------------------------------------------------------- fakes


class NaiveBayes:
    """Multinomial naive Bayes over whitespace tokens; the label set grows as it learns."""

    tags = ModelTags(gives_probabilities=True, learns_online=True)

    def __init__(self, name: str = "nb", alpha: float = 0.5) -> None:
        self.name = name
        self.alpha = alpha
        self.classes: list[str] = []
        self.class_count: dict[str, float] = {}
        self.word_count: dict[str, dict[str, float]] = {}
        self.total: dict[str, float] = {}
        self.learned = 0

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        n, k = len(items), len(self.classes)
        if k == 0:
            return AnswerBatch.from_labels([None] * n)
        vocab = max(len(self.word_count), 1)
        logp = np.zeros((n, k))
        prior = np.array([self.class_count[c] for c in self.classes])
        logp += np.log(prior / prior.sum())
        for i, it in enumerate(items):
            for w in it.text.split():
                counts = self.word_count.get(w)
                for j, c in enumerate(self.classes):
                    hit = counts.get(c, 0.0) if counts else 0.0
                    logp[i, j] += np.log((hit + self.alpha) / (self.total[c] + self.alpha * vocab))
        logp -= logp.max(axis=1, keepdims=True)
        probs = np.exp(logp)
        probs /= probs.sum(axis=1, keepdims=True)
        labels = [self.classes[j] for j in probs.argmax(axis=1)]
        return AnswerBatch.from_labels(labels, probs=probs, classes=tuple(self.classes))

    def learn(self, items: Sequence[Item], labels: Sequence[str]) -> None:
        for it, y in zip(items, labels, strict=True):
            if y not in self.class_count:
                self.classes.append(y)
                self.class_count[y] = 0.0
                self.total[y] = 0.0
            self.class_count[y] += 1.0
            for w in it.text.split():
                self.word_count.setdefault(w, {})
                self.word_count[w][y] = self.word_count[w].get(y, 0.0) + 1.0
                self.total[y] += 1.0
            self.learned += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "class_count": dict(self.class_count),
            "word_count": {w: dict(c) for w, c in self.word_count.items()},
            "total": dict(self.total),
            "learned": self.learned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.class_count = dict(state["class_count"])
        self.word_count = {w: dict(c) for w, c in state["word_count"].items()}
        self.total = dict(state["total"])
        self.learned = int(state["learned"])


class Column:
    """The expert: the item's ``label`` field. Counts calls and items asked."""

    tags = ModelTags()

    def __init__(self, name: str = "column") -> None:
        self.name = name
        self.calls = 0
        self.asked = 0

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.calls += 1
        self.asked += len(items)
        return AnswerBatch.from_labels([str(it.fields["label"]) for it in items])


class AsyncColumn(Column):
    tags = ModelTags(asynchronous=True)

    def __init__(self) -> None:
        super().__init__("async_column")
        self.async_calls = 0

    async def apredict(self, items: Sequence[Item]) -> AnswerBatch:
        self.async_calls += 1
        return self.predict(items)


def topic_stream(
    n: int, *, seed: int, labels: Sequence[str] = ("a", "b"), noise: float = 0.1, start: int = 0
) -> list[Item]:
    """Texts whose words mostly belong to their label's vocabulary.

    Label ``x`` draws words ``x0 .. x19``; a share ``noise`` of the words come from
    another label's vocabulary, so the stream is learnable but not trivially.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = labels[int(rng.integers(len(labels)))]
        words = []
        for _ in range(6):
            src = y if rng.random() > noise else labels[int(rng.integers(len(labels)))]
            words.append(f"{src}{int(rng.integers(20))}")
        out.append(Item(id=str(start + i), input=" ".join(words), fields={"label": y}))
    return out


def cascade(
    config: OnlineConfig,
    *,
    seed: int = 0,
    cheap_cost: float = 0.0,
    expert_cost: float = 0.01,
    n_cheap: int = 1,
    expert: Column | None = None,
) -> OnlineCascade:
    cheap = [
        Stage(f"nb{k}", NaiveBayes(f"nb{k}"), cost=FixedCost(usd_per_call=cheap_cost))
        for k in range(n_cheap)
    ]
    exp = Stage("expert", expert or Column(), cost=FixedCost(usd_per_call=expert_cost))
    return OnlineCascade(cheap, exp, config, seed=seed)


def run(oc: OnlineCascade, items: list[Item], batch: int = 100) -> list[OnlineDecision]:
    out: list[OnlineDecision] = []
    for i in range(0, len(items), batch):
        out.extend(oc.process(items[i : i + batch]))
    return out


# --------------------------------------------------------------------- config


def test_config_rejects_unknown_fields_and_two_objectives() -> None:
    with pytest.raises(ValidationError, match="warmpu"):
        OnlineConfig(warmpu=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="either target_agreement or mu"):
        OnlineConfig(target_agreement=0.9, mu=0.1)
    with pytest.raises(ValidationError, match="target_agreement"):
        OnlineConfig(target_agreement=1.5)
    assert OnlineConfig().effective_mu == 0.1


def test_stage_names_must_be_unique() -> None:
    with pytest.raises(ConfigError, match="unique"):
        OnlineCascade([Stage("x", NaiveBayes())], Stage("x", Column()))
    with pytest.raises(ConfigError, match="at least one cheap stage"):
        OnlineCascade([], Stage("expert", Column()))


# --------------------------------------------------------------------- warm-up, exploration, audits


def test_warmup_sends_everything_to_the_expert_then_cheap_stages_answer() -> None:
    oc = cascade(OnlineConfig(warmup=150, mu=0.2, exploration_beta=0.0))
    items = topic_stream(600, seed=1)
    out = run(oc, items)
    assert all(d.stage == "expert" and d.explored for d in out[:150])
    assert all(
        d.label == d.expert_label == it.fields["label"]
        for d, it in zip(out[:150], items[:150], strict=True)
    )
    cheap_after = sum(d.stage == "nb0" for d in out[150:])
    assert cheap_after > 300  # an easy stream: the learned stage takes over
    assert oc.stats().explored >= 150


def test_exploration_decays_as_beta_to_the_n() -> None:
    cfg = OnlineConfig(warmup=0, mu=1.0, audit_rate=0.0, exploration_beta=0.99)
    oc = cascade(cfg)
    assert oc.exploration_rate(0) == 1.0
    assert oc.exploration_rate(100) == pytest.approx(0.99**100)
    assert oc.exploration_rate(1000) < 1e-4
    out = run(oc, topic_stream(1500, seed=2))
    early = sum(d.explored for d in out[:200])
    late = sum(d.explored for d in out[1000:])
    # sum of 0.99**n over n < 200 is about 87; after 1000 about 0.004
    assert 60 <= early <= 115
    assert late == 0
    floor = cascade(cfg.model_copy(update={"exploration_min": 0.2}))
    assert floor.exploration_rate(10_000) == 0.2


def test_audits_happen_at_the_configured_rate_and_output_the_experts_label() -> None:
    # mu = 1: the cheap stage answers everything it can; 20% of that is audited.
    oc = cascade(OnlineConfig(warmup=50, mu=1.0, audit_rate=0.2, exploration_beta=0.0))
    items = topic_stream(3000, seed=3, noise=0.3)
    out = run(oc, items, batch=250)
    accepted = [d for d in out if d.stage == "nb0" or d.audited]  # the cheap stage's answers
    audited = [d for d in out if d.audited]
    assert len(accepted) > 2500
    assert abs(len(audited) / len(accepted) - 0.2) < 0.03
    for d, it in zip(out, items, strict=True):
        if d.audited:  # the expert's label is the output; the cheap answer is kept beside it
            assert d.expert_label == it.fields["label"]
            assert (d.label, d.stage, d.stage_index) == (d.expert_label, "expert", 1)
            assert d.confidence == 1.0
            assert d.audited_stage == "nb0" and d.cheap_label in ("a", "b")
        else:
            assert d.audited_stage is None and d.cheap_label is None
    # the audits saw the cheap stage both right and wrong (30% noise words)
    assert {d.cheap_label == d.expert_label for d in audited} == {True, False}
    assert all(d.expert_label is None for d in out if d.stage == "nb0")
    st = oc.stats()
    assert st.audits == len(audited)
    # the cheap-stage rate is the audited cheap labels' agreement, not the output's (1.0)
    agree = sum(d.cheap_label == d.expert_label for d in audited)
    assert st.cheap_agreement == pytest.approx(agree / len(audited))
    assert st.cheap_agreement < 0.99
    # every expert call's label is output: calls == expert answers
    assert st.expert_calls == sum(d.stage == "expert" for d in out)
    n_cheap = len(accepted) - len(audited)  # audited answers count under the expert
    assert st.stage_answers == {"nb0": n_cheap, "expert": len(out) - n_cheap}


class AlwaysA:
    """A cheap stage that does not learn: always 'a', with top probability 0.7."""

    tags = ModelTags(gives_probabilities=True)

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        probs = np.tile([0.7, 0.3], (len(items), 1))
        return AnswerBatch.from_labels(["a"] * len(items), probs=probs, classes=("a", "b"))


def a_or_b(n: int, *, p_a: float, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(n) < p_a, "a", "b")
    return [Item(id=str(i), input=f"w{i}", fields={"label": str(y)}) for i, y in enumerate(labels)]


def always_a(audit_rate: float, window: int = 2000) -> OnlineCascade:
    """The cheap stage agrees with the expert exactly on the items labelled 'a'."""
    cfg = OnlineConfig(
        warmup=100,
        mu=0.5,  # threshold 0.5: it answers every item after the warm-up
        deferral_signal="max_prob",
        audit_rate=audit_rate,
        exploration_beta=0.99,
        window=window,
    )
    cheap = [Stage("const", AlwaysA(), cost=FixedCost(usd_per_call=0.0))]
    return OnlineCascade(cheap, Stage("expert", Column(), cost=FixedCost(usd_per_call=0.01)), cfg)


def _estimate_from(decisions: Sequence[OnlineDecision]) -> tuple[float, float, float, float]:
    """(estimate, CI low, CI high, audited rate) computed by hand from the decisions."""
    n = len(decisions)
    n_expert = sum(d.stage == "expert" for d in decisions)  # audited ones included
    audits = [d for d in decisions if d.audited and d.expert_label is not None]
    k = sum(d.cheap_label == d.expert_label for d in audits)
    rate = k / len(audits)
    lo, hi = wilson_interval(k, len(audits))
    n_cheap = n - n_expert
    return (
        (n_expert + n_cheap * rate) / n,
        (n_expert + n_cheap * lo) / n,
        (n_expert + n_cheap * hi) / n,
        rate,
    )


def test_reported_agreement_counts_audited_items_as_the_experts() -> None:
    # the cheap stage's true agreement is the share of 'a' (0.8), known by construction
    items = a_or_b(4000, p_a=0.8, seed=21)
    oc = always_a(audit_rate=0.25, window=1000)
    out = run(oc, items, batch=200)
    audited = [d for d in out if d.audited]
    assert len(audited) > 500
    assert all(d.cheap_label == "a" and d.label == d.expert_label for d in audited)
    assert all(d.label == "a" for d in out if d.stage == "const")
    st = oc.stats()
    est, lo, hi, rate = _estimate_from(out)
    assert st.audited_agreement == pytest.approx(est)
    assert (st.ci_low, st.ci_high) == pytest.approx((lo, hi))
    assert st.cheap_agreement == pytest.approx(rate) and abs(rate - 0.8) < 0.05
    # the window: the same over the last 1000 decisions
    w_est, w_lo, w_hi, _ = _estimate_from(out[-1000:])
    assert st.window_agreement == pytest.approx(w_est)
    assert (st.window_ci_low, st.window_ci_high) == pytest.approx((w_lo, w_hi))
    # the estimate tells the truth about the output: audited items now agree
    true = np.mean([d.label == it.fields["label"] for d, it in zip(out, items, strict=True)])
    assert st.ci_low <= true <= st.ci_high
    assert abs(st.audited_agreement - true) < 0.02
    # counting the audited items as cheap answers (their output used to be the cheap
    # label) would now under-state the output's agreement by audits * (1 - rate) / n
    n_old_expert = sum(d.stage == "expert" and not d.audited for d in out)
    old = (n_old_expert + (len(out) - n_old_expert) * rate) / len(out)
    assert st.audited_agreement - old == pytest.approx(len(audited) * (1 - rate) / len(out))
    assert st.audited_agreement - old > 0.02
    assert abs(true - st.audited_agreement) < abs(true - old)


def test_audits_feed_the_controller_the_cheap_heads_score_and_outcome() -> None:
    items = a_or_b(1200, p_a=0.8, seed=22)
    oc = always_a(audit_rate=0.3)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    observe = oc.controller.observe_audits

    def spy(predicted: np.ndarray, agreed: np.ndarray) -> None:
        seen.append((predicted.copy(), agreed.copy()))
        observe(predicted, agreed)

    oc.controller.observe_audits = spy  # type: ignore[method-assign]
    out = run(oc, items, batch=200)
    predicted = np.concatenate([p for p, _ in seen])
    agreed = np.concatenate([a for _, a in seen])
    audited = [d for d in out if d.audited]
    assert len(predicted) == len(audited) > 100
    assert np.all(predicted == 0.7)  # the cheap stage's P(correct), not the output's 1.0
    assert agreed.tolist() == [float(d.cheap_label == d.expert_label) for d in audited]
    assert 0 < agreed.mean() < 1


def test_meter_state_format_is_unchanged_and_round_trips() -> None:
    # checkpoints from before audited items output the expert's label still load
    oc = always_a(audit_rate=0.2)
    run(oc, a_or_b(600, p_a=0.8, seed=23))
    state = decode_state(encode_state(oc.state_dict()))
    assert set(state["meter"]) == {
        "stage", "audited", "agree", "called", "pos", "size",
        "total_stage", "total_audits", "total_agree", "total_called",
    }  # fmt: skip
    again = always_a(audit_rate=0.2)
    again.load_state_dict(state)
    assert repr(again.stats()) == repr(oc.stats())


def test_one_expert_call_per_batch_and_async_expert() -> None:
    expert = Column()
    oc = cascade(OnlineConfig(warmup=0, mu=0.1, batch_size=200), expert=expert)
    oc.process(topic_stream(600, seed=4))
    assert expert.calls == 3  # one call per internal batch, for everything that goes up
    aexpert = AsyncColumn()
    oc = cascade(OnlineConfig(warmup=0, mu=0.1, batch_size=200), expert=aexpert)
    out = asyncio.run(oc.aprocess(topic_stream(400, seed=4)))
    assert len(out) == 400 and aexpert.async_calls == 2
    # a sync process with an async-capable expert uses its predict
    oc = cascade(OnlineConfig(warmup=0, mu=0.1, batch_size=200), expert=AsyncColumn())
    oc.process(topic_stream(200, seed=4))
    assert oc.expert.model.async_calls == 0  # type: ignore[attr-defined]


# --------------------------------------------------------------------- confidence intervals


def test_wilson_and_clopper_pearson_against_known_values() -> None:
    # 81 of 263 (the textbook example; scipy.stats.binomtest(81, 263).proportion_ci)
    lo, hi = wilson_interval(81, 263, 0.95)
    assert (lo, hi) == pytest.approx((0.255288519878, 0.366209576983), abs=1e-9)
    lo, hi = clopper_pearson_interval(81, 263, 0.95)
    assert (lo, hi) == pytest.approx((0.252736745585, 0.367621922601), abs=1e-9)
    # closed forms at k = 0: Wilson upper z^2/(n+z^2); Clopper-Pearson 1 - (alpha/2)^(1/n)
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert clopper_pearson_interval(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert clopper_pearson_interval(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    # Clopper-Pearson is the wider one; no data says nothing
    w, c = wilson_interval(45, 50), clopper_pearson_interval(45, 50)
    assert c[0] < w[0] and c[1] > w[1]
    assert binomial_interval(0, 0) == (0.0, 1.0)
    assert binomial_interval(5, 10, 0.9, "clopper_pearson") == clopper_pearson_interval(5, 10, 0.9)
    with pytest.raises(ValueError, match="unknown CI method"):
        binomial_interval(1, 2, 0.95, "wald")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)


def test_overall_agreement_counts_expert_answers_as_agreeing() -> None:
    # 600 expert answers, 400 cheap ones of which 90 of 100 audits agreed
    est = estimate_agreement(600, 400, 100, 90, confidence=0.95, method="wilson")
    assert est.agreement == pytest.approx((600 + 400 * 0.9) / 1000)
    lo_c, hi_c = wilson_interval(90, 100)
    assert est.low == pytest.approx((600 + 400 * lo_c) / 1000)
    assert est.high == pytest.approx((600 + 400 * hi_c) / 1000)
    assert estimate_agreement(10, 0, 0, 0, confidence=0.95, method="wilson").agreement == 1.0
    assert math.isnan(estimate_agreement(0, 5, 0, 0, confidence=0.95, method="wilson").agreement)


# --------------------------------------------------------------------- the controller


def _controller(target: float = 0.9) -> ThresholdController:
    c = ThresholdController(OnlineConfig(target_agreement=target, window=500), 1)
    rng = np.random.default_rng(0)
    feats = np.zeros((500, 1, 6))
    feats[:, 0, 1] = rng.uniform(-1, 3, 500)  # the scorer below reads column 1
    c.observe(feats)
    return c


def _scorer(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x[:, 1]))


def test_controller_raises_deferral_when_agreement_falls() -> None:
    on_target = estimate_agreement(5000, 5000, 250, 200, confidence=0.95, method="wilson")
    falling = estimate_agreement(5000, 5000, 250, 170, confidence=0.95, method="wilson")
    above = estimate_agreement(5000, 5000, 250, 245, confidence=0.95, method="wilson")
    assert on_target.agreement == pytest.approx(0.9)
    c = _controller()
    t_on = c.update(on_target, [_scorer])
    t_fall = c.update(falling, [_scorer])
    t_above = c.update(above, [_scorer])
    assert t_fall > t_on > t_above
    # the threshold it picks makes the predicted agreement of recent items reach the need
    c.update(on_target, [_scorer])
    pred = c.predicted_agreement([_scorer])
    assert pred[np.searchsorted(c.grid, c.threshold)] >= c.required - 1e-12


def test_controller_reacts_to_a_window_far_below_target() -> None:
    overall = estimate_agreement(5000, 5000, 250, 200, confidence=0.95, method="wilson")
    bad_window = estimate_agreement(100, 400, 40, 24, confidence=0.95, method="wilson")
    c = _controller()
    calm = c.update(overall, [_scorer])
    alarmed = c.update(overall, [_scorer], bad_window)
    assert bad_window.high < 0.9 and alarmed > calm


def test_predicted_agreement_matches_a_direct_count() -> None:
    rng = np.random.default_rng(1)
    for k in (1, 2, 3):
        cfg = OnlineConfig(target_agreement=0.9, window=300, audit_rate=0.05)
        c = ThresholdController(cfg, k)
        feats = rng.normal(size=(300, k, 6))
        feats[rng.random((300, k)) < 0.2] = np.nan  # stages that did not run
        c.observe(feats)
        c.observe_audits(np.full(200, 0.9), (rng.random(200) < 0.5).astype(float))
        assert c.correction < -0.1  # the heads' scores are corrected
        scorers = [lambda x, j=j: 1.0 / (1.0 + np.exp(-x[:, j])) for j in range(k)]
        fast = c.predicted_agreement(scorers)
        s = np.nan_to_num(c.recent_scores(scorers), nan=-1.0)
        # accepted by stage j: audited (the expert's label, agrees) with audit_rate 0.05,
        # else agrees with the corrected P(correct)
        v = 0.05 + 0.95 * np.clip(s + c.correction, 0.0, 1.0)
        for g in (0, 50, 128, 255):
            t = c.grid[g]
            slow = np.mean(
                [next((v[i, j] for j in range(k) if s[i, j] >= t), 1.0) for i in range(300)]
            )
            assert fast[g] == pytest.approx(slow)


def test_mu_fixes_the_threshold() -> None:
    oc = cascade(OnlineConfig(mu=0.25, warmup=20))
    run(oc, topic_stream(400, seed=5))
    assert oc.thresholds() == {"nb0": 0.75}
    assert all(
        d.confidence >= 0.75 for d in oc.process(topic_stream(200, seed=6)) if d.stage == "nb0"
    )


def test_target_is_held_on_a_learnable_stream() -> None:
    items = topic_stream(4000, seed=7, noise=0.35)
    oc = cascade(OnlineConfig(target_agreement=0.95, warmup=100, window=1000, audit_rate=0.1))
    out = run(oc, items, batch=200)
    true = np.mean([d.label == it.fields["label"] for d, it in zip(out, items, strict=True)])
    st = oc.stats()
    # the confidence sequence covers the truth (a fixed-sample interval misses it on one
    # stream in twenty, this one among them depending on which items were audited)
    assert st.cs_low <= true <= st.cs_high
    assert true >= 0.93
    assert st.stage_share["nb0"] > 0.4  # and it did not just send everything up


# --------------------------------------------------------------------- distribution shift


def _shifted(n: int, seed: int, start: int) -> list[Item]:
    """Second half of the shift stream: a new label 'c' whose texts share half their
    words with label 'a', so a stage that never saw 'c' answers 'a', confidently."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = ["a", "b", "c"][int(rng.integers(3))]
        if y == "c":
            words = [f"a{int(rng.integers(20))}" for _ in range(3)]
            words += [f"c{int(rng.integers(20))}" for _ in range(3)]
        else:
            words = [f"{y}{int(rng.integers(20))}" for _ in range(6)]
        out.append(Item(id=str(start + i), input=" ".join(words), fields={"label": y}))
    return out


def test_shift_shows_as_falling_agreement_and_rising_deferral_then_recovers() -> None:
    n = 1500
    items = topic_stream(n, seed=1, noise=0.25) + _shifted(n, seed=2, start=n)
    # the point-estimate controller: it runs close to the target, so the shift shows in full
    cfg = OnlineConfig(
        target_agreement=0.9, warmup=100, batch_size=100, window=500, audit_rate=0.1,
        control="estimate",
    )  # fmt: skip
    oc = cascade(cfg)
    run(oc, items)
    hist = {row["n"]: row for row in oc.history}

    def at(n_items: int) -> dict[str, float]:
        return hist[max(k for k in hist if k <= n_items)]

    before = at(n)
    worst_agreement = min(hist[k]["window_agreement"] for k in hist if n < k <= n + 700)
    peak_share = max(hist[k]["expert_share"] for k in hist if n < k <= n + 1000)
    end = at(2 * n)
    assert before["window_agreement"] > 0.93 and before["expert_share"] < 0.2
    assert worst_agreement < before["window_agreement"] - 0.1  # the shift is seen
    assert peak_share > before["expert_share"] + 0.15  # and deferral rises
    assert end["window_agreement"] > 0.95  # the stage learned 'c'
    assert end["expert_share"] < peak_share - 0.15  # and takes over again
    assert "c" in oc.cheap[0].model.classes  # type: ignore[attr-defined]


# --------------------------------------------------------------------- state and cost


def test_state_dict_round_trip_continues_identically() -> None:
    cfg = OnlineConfig(target_agreement=0.92, warmup=60, batch_size=80, window=300, refit_every=50)
    items = topic_stream(1200, seed=8, noise=0.3)
    first, rest = items[:500], items[500:]
    a = cascade(cfg, seed=3, n_cheap=2)
    run(a, first)
    blob = encode_state(a.state_dict())
    out_a = run(a, rest)
    b = cascade(cfg, seed=3, n_cheap=2)  # fresh models, same arguments
    b.load_state_dict(decode_state(blob))
    out_b = run(b, rest)
    assert out_a == out_b
    assert repr(a.stats()) == repr(b.stats())  # repr: NaN == NaN
    assert repr(a.history) == repr(b.history)
    assert sum(d.stage == "nb0" for d in out_a) > 0 and sum(d.audited for d in out_a) > 0
    # a different seed takes a different path
    c = cascade(cfg, seed=4, n_cheap=2)
    assert run(c, items)[500:] != out_a


def test_state_dict_refuses_other_stages() -> None:
    a = cascade(OnlineConfig(mu=0.1))
    run(a, topic_stream(100, seed=9))
    b = cascade(OnlineConfig(mu=0.1), n_cheap=2)
    with pytest.raises(StoreError, match="stages"):
        b.load_state_dict(a.state_dict())


def test_every_stage_that_ran_is_paid() -> None:
    cfg = OnlineConfig(mu=0.3, warmup=40, audit_rate=0.2, exploration_beta=0.98)
    oc = cascade(cfg, n_cheap=2, cheap_cost=0.001, expert_cost=0.01)
    items = topic_stream(1500, seed=10, noise=0.4)
    out = run(oc, items)
    seen = set()
    cheap_index = {"nb0": 0, "nb1": 1}
    for d in out:
        if d.audited:  # the stages up to the audited one ran, and the expert
            expected = 0.001 * (cheap_index[d.audited_stage] + 1) + 0.01  # type: ignore[index]
        elif d.stage == "expert":  # both cheap stages ran (deferred, warm-up or explored)
            expected = 0.002 + 0.01
        else:
            expected = 0.001 * (d.stage_index + 1)
        assert d.cost == pytest.approx(expected), d
        seen.add((d.stage, d.audited_stage))
    assert {("expert", None), ("nb0", None), ("expert", "nb0"), ("nb1", None)} <= seen
    st = oc.stats()
    assert st.usd_spent == pytest.approx(sum(d.cost for d in out))
    assert st.usd_expert_only == pytest.approx(0.01 * len(items))
    assert st.stage_answers == {
        name: sum(d.stage == name for d in out) for name in ("nb0", "nb1", "expert")
    }


def test_expert_share_cap_is_respected_after_warmup() -> None:
    cfg = OnlineConfig(target_agreement=0.999, warmup=100, max_expert_share=0.3)
    oc = cascade(cfg)
    items = topic_stream(2000, seed=11, noise=0.4)
    out = run(oc, items)
    calls = np.cumsum([d.stage == "expert" or d.audited for d in out])
    n = np.arange(1, len(out) + 1)
    assert np.all(calls[399:] <= np.floor(0.3 * n[399:]) + 100)  # allowed per batch
    assert calls[-1] <= 0.3 * len(out)


def test_history_rows_describe_the_stream_over_time() -> None:
    oc = cascade(OnlineConfig(target_agreement=0.9, warmup=50, history_every=300))
    run(oc, topic_stream(1200, seed=12))
    ns = [row["n"] for row in oc.history]
    assert ns == sorted(ns) and ns[-1] == 1200 and len(ns) <= 6
    row = oc.history[-1]
    for key in (
        "expert_share",
        "agreement",
        "ci_low",
        "ci_high",
        "window_agreement",
        "usd",
        "usd_expert_only",
        "threshold",
        "stage_share",
    ):
        assert key in row
    assert row["usd"] <= row["usd_expert_only"]
    assert set(row["stage_share"]) == {"nb0", "expert"}


class _Gappy(Column):
    """An expert that cannot label items whose id ends in 7."""

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.calls += 1
        return AnswerBatch.from_labels(
            [None if it.id.endswith("7") else str(it.fields["label"]) for it in items]
        )


def test_expert_without_an_answer_is_not_learned_from_nor_counted_as_an_audit() -> None:
    oc = cascade(OnlineConfig(mu=0.3, warmup=100, audit_rate=0.3), expert=_Gappy())
    out = run(oc, topic_stream(1000, seed=13))
    gaps = [d for d in out if d.id.endswith("7") and d.stage == "expert"]
    assert gaps and all(d.label is None and d.expert_label is None for d in gaps)
    audited_gaps = sum(d.audited and d.id.endswith("7") for d in out)
    assert audited_gaps > 0
    for d in out:  # an audit without the expert's label leaves the cheap answer out
        if d.audited and d.expert_label is None:
            assert d.stage == d.audited_stage == "nb0" and d.label == d.cheap_label is not None
            assert d.confidence < 1.0
        elif d.audited:
            assert d.stage == "expert" and d.label == d.expert_label
    assert oc.stats().audits == sum(d.audited for d in out) - audited_gaps
    labelled = sum(d.expert_label is not None for d in out)
    assert oc.cheap[0].model.learned + len(oc.pending_items) >= labelled  # type: ignore[attr-defined]
    assert oc.labels_learned == labelled


def test_a_stage_that_is_always_right_gets_to_answer() -> None:
    # one label only: the stage is never wrong, so its head must still let it answer
    items = [Item(id=str(i), input="x y z", fields={"label": "a"}) for i in range(600)]
    # steering the point estimate: 600 items at 5% audits cannot promise 0.95 with a bound
    cfg = OnlineConfig(target_agreement=0.95, warmup=50, window=200, control="estimate")
    oc = cascade(cfg)
    out = run(oc, items)
    assert sum((d.audited_stage or d.stage) == "nb0" for d in out[300:]) > 250
    assert 0.9 < out[-1].confidence < 1.0 or out[-1].stage == "expert"


class _FirstLetter(Column):
    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.calls += 1
        return AnswerBatch.from_labels([it.text[0] for it in items])


def test_plain_strings_are_items_and_empty_input_is_fine() -> None:
    oc = cascade(OnlineConfig(mu=0.2, warmup=5), expert=_FirstLetter())
    out = oc.process(["a0 a1", "b0 b1"])
    assert [(d.id, d.label, d.stage) for d in out] == [("0", "a", "expert"), ("1", "b", "expert")]
    assert oc.process([]) == []
    assert oc.stats().n_items == 2


def test_lower_bound_control_is_more_careful_than_the_point_estimate() -> None:
    items = topic_stream(3000, seed=14, noise=0.35)
    calls = {}
    for control in ("estimate", "lower_bound"):
        cfg = OnlineConfig(target_agreement=0.95, control=control, warmup=100, window=800)
        oc = cascade(cfg)
        run(oc, items, batch=200)
        calls[control] = oc.stats().expert_calls
        if control == "lower_bound":
            assert oc.stats().ci_low > 0.945  # the bound is held (softly: a controller)
    assert calls["lower_bound"] > calls["estimate"] * 1.1
