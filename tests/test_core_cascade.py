from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tiered.core import (
    AnswerBatch,
    Cascade,
    FixedCost,
    Item,
    LatencyCost,
    Stage,
    Threshold,
    TokenCost,
)
from tiered.errors import ConfigError, ModelError

from .conftest import FakeModel


def _items(n: int) -> list[Item]:
    return [Item(id=f"q{i}", input=f"text {i}", fields={"conf": i / n}) for i in range(n)]


def _three_stage() -> tuple[Cascade, list[FakeModel]]:
    small = FakeModel(
        "small", lambda it: "s", cost=1.0, signals={"score": lambda it: it.fields["conf"]}
    )
    mid = FakeModel(
        "mid", lambda it: "m", cost=10.0, signals={"score": lambda it: it.fields["conf"] + 0.3}
    )
    big = FakeModel("big", lambda it: "b", cost=100.0)
    cascade = Cascade(
        [
            Stage("small", small, Threshold(signal="score", threshold=0.8)),
            Stage("mid", mid, Threshold(signal="score", threshold=0.8)),
            Stage("big", big),
        ]
    )
    return cascade, [small, mid, big]


def test_cost_is_cumulative_over_every_stage_that_ran() -> None:
    cascade, _ = _three_stage()
    result = cascade.run(_items(10))
    # conf 0.8, 0.9 -> small (1); 0.5..0.7 -> mid (1+10); 0.0..0.4 -> big (1+10+100)
    expected = [111.0] * 5 + [11.0] * 3 + [1.0] * 2
    assert result.cost.tolist() == expected
    assert result.labels == ["b"] * 5 + ["m"] * 3 + ["s"] * 2
    assert result.stage_share() == {"small": 0.2, "mid": 0.3, "big": 0.5}


def test_later_stages_only_see_items_passed_on() -> None:
    cascade, (small, mid, big) = _three_stage()
    cascade.run(_items(10))
    assert len(small.seen) == 10
    assert mid.seen == [f"q{i}" for i in range(8)]
    assert big.seen == [f"q{i}" for i in range(5)]


def test_decision_trace_lists_every_stage_that_ran() -> None:
    cascade, _ = _three_stage()
    result = cascade.run(_items(10))
    d = result[2]
    assert d.id == "q2" and d.stage == "big" and d.stage_index == 2
    assert [t.stage for t in d.trace] == ["small", "mid", "big"]
    assert [t.accepted for t in d.trace] == [False, False, True]
    assert d.trace[0].signals["score"] == pytest.approx(0.2)
    assert d.latency_ms == pytest.approx(3.0)
    assert result[9].trace[0].accepted and len(result[9].trace) == 1


def test_no_answer_is_always_passed_on() -> None:
    sure_but_silent = FakeModel("a", lambda it: None, signals={"score": lambda it: 1.0})
    big = FakeModel("b", lambda it: "b")
    result = Cascade(
        [Stage("a", sure_but_silent, Threshold(signal="score", threshold=0.0)), Stage("b", big)]
    ).run(_items(3))
    assert result.labels == ["b", "b", "b"]


def test_cost_models_price_calls() -> None:
    answers = AnswerBatch.from_labels(
        ["x", "y"],
        cost=0.5,
        latency_ms=np.array([10.0, 30.0]),
        tokens_in=np.array([100, 200]),
        tokens_out=np.array([1, 3]),
    )
    assert FixedCost(usd_per_call=0.002).cost(answers).tolist() == [0.002, 0.002]
    tok = TokenCost(usd_per_input_token=1e-6, usd_per_output_token=1e-5, usd_per_request=1e-4)
    assert tok.cost(answers) == pytest.approx([100e-6 + 1e-5 + 1e-4, 200e-6 + 3e-5 + 1e-4])
    assert LatencyCost().cost(answers).tolist() == [10.0, 30.0]


def test_stage_cost_model_overrides_recorded_cost() -> None:
    m = FakeModel("m", lambda it: "x", cost=123.0)
    result = Cascade([Stage("m", m, cost=FixedCost(usd_per_call=0.25))]).run(_items(4))
    assert result.cost.tolist() == [0.25] * 4


def test_empty_batch_and_single_item_helper() -> None:
    cascade, _ = _three_stage()
    assert len(cascade.run([])) == 0
    assert cascade.run_one(Item("z", "t", fields={"conf": 0.95})).stage == "small"


def test_async_run_matches_sync_run() -> None:
    cascade, _ = _three_stage()
    a = cascade.run(_items(10))
    b = asyncio.run(cascade.arun(_items(10)))
    assert a.labels == b.labels and a.cost.tolist() == b.cost.tolist()


class _AsyncFake(FakeModel):
    """Answers ``apredict`` with another label, so a test sees which path ran."""

    async def apredict(self, items: list[Item]) -> AnswerBatch:
        return AnswerBatch.from_labels(["async"] * len(items), cost=1.0)


def test_async_run_awaits_the_model_a_stage_holds_now() -> None:
    sync_model = FakeModel("m", lambda it: "sync")
    stage = Stage("m", sync_model)
    cascade = Cascade([stage])
    assert asyncio.run(cascade.arun(_items(2))).labels == ["sync", "sync"]
    stage.model = _AsyncFake("m", lambda it: "sync")
    assert asyncio.run(cascade.arun(_items(2))).labels == ["async", "async"]
    stage.model = sync_model
    assert asyncio.run(cascade.arun(_items(2))).labels == ["sync", "sync"]


def test_model_returning_wrong_count_is_an_error() -> None:
    class Short(FakeModel):
        def predict(self, items):  # type: ignore[no-untyped-def]
            return super().predict(items[:-1])

    with pytest.raises(ModelError, match="returned 2 answers for 3 items"):
        Cascade([Stage("s", Short("s", lambda it: "x"))]).run(_items(3))


def test_stage_names_must_be_unique() -> None:
    m = FakeModel("m", lambda it: "x")
    with pytest.raises(ConfigError, match="repeated"):
        Cascade([Stage("m", m), Stage("m", m)])


def test_failed_stage_can_pass_items_on() -> None:
    from tiered.errors import UpstreamError

    class Down(FakeModel):
        def predict(self, items):  # type: ignore[no-untyped-def]
            raise UpstreamError("upstream 503", status=503, retryable=True)

    big = FakeModel("big", lambda it: "b", cost=5.0)
    deferring = Cascade(
        [Stage("down", Down("down", lambda it: "x"), on_error="defer"), Stage("big", big)]
    )
    result = deferring.run(_items(3))
    assert result.labels == ["b"] * 3 and result.cost.tolist() == [5.0] * 3
    assert "upstream 503" in result.steps[0].answers.extra["error"][0]
    assert asyncio.run(deferring.arun(_items(3))).labels == ["b"] * 3

    raising = Cascade([Stage("down", Down("down", lambda it: "x")), Stage("big", big)])
    with pytest.raises(UpstreamError, match="503"):
        raising.run(_items(3))
