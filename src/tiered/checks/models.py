"""Contract checks every :class:`~tiered.core.model.Model` must pass.

Which checks apply is read from the model's :class:`~tiered.core.model.ModelTags`
(never from its class). A check is a function of a :class:`ModelCase` that raises
``AssertionError`` when the contract is broken. A model with a known gap lists it in
``ModelCase.expected_failures`` as ``{check_name: reason}``: the check still runs and
must fail (an expected failure that passes is reported, so the entry gets removed);
nothing is skipped silently.

A model class says how the checks build it with a ``contract_case()`` classmethod (see
:class:`HasContractCase`); :func:`contract_case` finds it for a registered model kind,
so the project's contract test covers every kind, tiered's and plugins' alike.

>>> from tiered.models.label_column import LabelColumn
>>> report = check_model(ModelCase("label_column", LabelColumn))
>>> report["predict_one_answer_per_item"]
'passed'
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import math
import pickle
import tracemalloc
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from tiered.checks.data import TOY_CLASSES, marker, toy_items
from tiered.checks.report import run_checks
from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.model import LearnableModel, Model, ModelTags
from tiered.store.state import decode_state, encode_state

ItemMaker = Callable[[int, int, Sequence[str]], list[Item]]


@dataclass
class ModelCase:
    """What the checks need to exercise one model.

    - ``factory``: builds a fresh, independent model at each call;
    - ``make_items(n, seed, classes)``: ``n`` fresh items (same arguments, same items),
      whose label (for learning models) is in ``fields[label_field]``;
    - ``expected_failures``: known gaps, ``{check_name: reason}``;
    - ``n_items``, ``stream_rounds``, ``stream_batch``: sizes (keep them small for slow
      models); ``memory_slack_bytes``: how much memory may still grow once warm.
    """

    name: str
    factory: Callable[[], Model]
    make_items: ItemMaker = toy_items
    label_field: str = "label"
    expected_failures: Mapping[str, str] = field(default_factory=dict)
    classes: tuple[str, ...] = TOY_CLASSES
    n_items: int = 24
    stream_rounds: int = 8
    stream_batch: int = 100
    memory_slack_bytes: int = 256 * 1024

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], resources: Mapping[str, Any] | None = None, **options: Any
    ) -> ModelCase:
        """A case building the model from its cascade-file spec, as a cascade would;
        ``resources`` are what the build context hands it (a replay log, say)."""
        from tiered.core.spec import BuildContext, build_model

        def factory() -> Model:
            return build_model(dict(spec), BuildContext(resources=dict(resources or {})))

        return cls(str(spec["kind"]), factory, **options)

    def items(self, seed: int = 0, n: int | None = None) -> list[Item]:
        return self.make_items(self.n_items if n is None else n, seed, self.classes)

    def labels(self, items: Sequence[Item]) -> list[str]:
        return [str(it.fields[self.label_field]) for it in items]

    def teach(self, model: Model, seed: int = 100, n: int | None = None) -> None:
        """Let a learning model learn from a few batches (no-op for the others)."""
        if model.tags.learns_online:
            for k in range(3):
                items = self.items(seed + k, n)
                _learn(model, items, self.labels(items))


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[ModelCase], None]
    applies: Callable[[ModelTags], bool]
    doc: str


CHECKS: dict[str, Check] = {}


def _check(
    applies: Callable[[ModelTags], bool] = lambda tags: True,
) -> Callable[[Callable[[ModelCase], None]], Callable[[ModelCase], None]]:
    def deco(fn: Callable[[ModelCase], None]) -> Callable[[ModelCase], None]:
        name = fn.__name__.removeprefix("check_")
        CHECKS[name] = Check(name, fn, applies, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def _learns(tags: ModelTags) -> bool:
    return tags.learns_online


def _deterministic(tags: ModelTags) -> bool:
    return not tags.stochastic


# ------------------------------------------------------------------ helpers
def _assert_same(a: AnswerBatch, b: AnswerBatch, what: str, *, stochastic: bool = False) -> None:
    """Identical answers (for a stochastic model: as many, over the same classes)."""
    assert len(a) == len(b), f"{what}: {len(a)} answers vs {len(b)}"
    assert a.classes == b.classes, f"{what}: classes differ: {a.classes} vs {b.classes}"
    if stochastic:
        return
    assert a.labels == b.labels, f"{what}: labels differ: {a.labels} vs {b.labels}"
    if a.probs is None or b.probs is None:
        assert a.probs is None and b.probs is None, f"{what}: probs present in one only"
    else:
        assert np.array_equal(a.probs, b.probs), f"{what}: probabilities differ"


def _rows_match(a: AnswerBatch, b: AnswerBatch, what: str, atol: float) -> None:
    """Same answers, allowing float noise; labels may differ only on near-ties."""
    assert len(a) == len(b) and a.classes == b.classes, f"{what}: shapes differ"
    if a.probs is None or b.probs is None:
        assert a.labels == b.labels, f"{what}: labels differ: {a.labels} vs {b.labels}"
        return
    assert np.allclose(a.probs, b.probs, atol=atol), f"{what}: probabilities differ"
    top2 = np.sort(a.probs, axis=1)[:, -2:] if a.probs.shape[1] >= 2 else None
    for i, (x, y) in enumerate(zip(a.labels, b.labels, strict=True)):
        near_tie = top2 is not None and top2[i, 1] - top2[i, 0] < 10 * atol
        assert x == y or near_tie, f"{what}: item {i} answered {x!r} vs {y!r}"


def _learn(model: Model, items: Sequence[Item], labels: Sequence[str]) -> None:
    cast(LearnableModel, model).learn(items, labels)


def _snapshot(items: Sequence[Item]) -> list[tuple[str, object, dict[str, object]]]:
    return [(it.id, copy.deepcopy(it.input), copy.deepcopy(it.fields)) for it in items]


# ------------------------------------------------------------------- checks
@_check()
def check_predict_one_answer_per_item(case: ModelCase) -> None:
    """predict returns an AnswerBatch with one well-formed answer per item, in order."""
    model = case.factory()
    case.teach(model)
    items = case.items(1)
    a = model.predict(items)
    assert isinstance(a, AnswerBatch), f"predict returned {type(a).__name__}, not AnswerBatch"
    assert len(a) == len(items), f"{len(a)} answers for {len(items)} items"
    for x in a.labels:
        assert x is None or isinstance(x, str), f"label {x!r} is neither a str nor None"
    assert np.isfinite(a.cost).all() and (a.cost >= 0).all(), f"bad costs {a.cost}"
    lat = a.latency_ms
    assert (np.isnan(lat) | (lat >= 0)).all(), f"negative latency {lat}"
    if not model.tags.stochastic:
        back = model.predict(items[::-1])
        _rows_match(back.take(np.arange(len(back))[::-1]), a, "reversed batch", atol=1e-5)


@_check()
def check_predict_empty_batch(case: ModelCase) -> None:
    """An empty batch gives zero answers (and learning from one is a no-op)."""
    model = case.factory()
    a = model.predict([])
    assert isinstance(a, AnswerBatch) and len(a) == 0, f"{len(a)} answers for no item"
    if model.tags.learns_online:
        _learn(model, [], [])
        case.teach(model)
        assert len(model.predict([])) == 0


@_check(_deterministic)
def check_batch_independence(case: ModelCase) -> None:
    """An item's answer does not depend on the other items of its batch."""
    model = case.factory()
    case.teach(model)
    items = case.items(2, 6)
    together = model.predict(items)
    for i, it in enumerate(items):
        alone = model.predict([case.items(2, 6)[i]])
        _rows_match(alone, together.take(np.array([i])), f"item {it.id} alone", atol=1e-5)


@_check(lambda tags: tags.gives_probabilities)
def check_probabilities(case: ModelCase) -> None:
    """probs is (n, len(classes)), in [0, 1], rows sum to 1; labels are argmax classes."""
    model = case.factory()
    stages = [("before learning", model.predict(case.items(3)))]
    if model.tags.learns_online:
        case.teach(model)
        stages.append(("after learning", model.predict(case.items(3))))
    for when, a in stages:
        assert a.probs is not None and a.classes is not None, f"{when}: no probabilities"
        n, k = len(a), len(a.classes)
        assert a.probs.shape == (n, k), f"{when}: probs shape {a.probs.shape} != {(n, k)}"
        assert len(set(a.classes)) == k, f"{when}: repeated classes {a.classes}"
        assert all(isinstance(c, str) for c in a.classes), f"{when}: non-str class"
        if k == 0:
            assert all(x is None for x in a.labels), f"{when}: a label without any class"
            continue
        p = a.probs
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all(), f"{when}: {p}"
        assert np.allclose(p.sum(axis=1), 1.0, atol=1e-6), f"{when}: rows do not sum to 1"
        for i, x in enumerate(a.labels):
            if x is not None:
                assert x in a.classes, f"{when}: label {x!r} not in classes {a.classes}"
                j = a.classes.index(x)
                assert math.isclose(p[i, j], p[i].max()), f"{when}: label {x!r} is not argmax"


@_check(_learns)
def check_predict_before_learning(case: ModelCase) -> None:
    """A model that learned nothing still answers (labels None or known classes)."""
    model = case.factory()
    items = case.items(4)
    a = model.predict(items)
    assert len(a) == len(items)
    known = set(a.classes or ())
    for x in a.labels:
        assert x is None or x in known, f"untrained model answered {x!r}"


@_check(_learns)
def check_learning_leaves_input_alone(case: ModelCase) -> None:
    """learn and predict change neither the items (id, input, fields) nor the labels."""
    model = case.factory()
    items = case.items(5)
    labels = case.labels(items)
    before, labels_before = _snapshot(items), list(labels)
    _learn(model, items, labels)
    model.predict(items)
    assert _snapshot(items) == before, "learn/predict changed the items"
    assert labels == labels_before, "learn changed the labels list"


@_check(_learns)
def check_learning_keeps_no_text(case: ModelCase) -> None:
    """A learning model keeps no copy of the texts it learned from (pickled state)."""
    model = case.factory()
    items = case.items(6)
    _learn(model, items, case.labels(items))
    model.predict(items)
    blob = pickle.dumps(model)
    kept = [i for i in range(len(items)) if marker(6, i).encode() in blob]
    assert not kept, f"the pickled model holds the text of {len(kept)} learned items"


@_check(_deterministic)
def check_seeded_determinism(case: ModelCase) -> None:
    """Two models from the factory, given the same data, answer identically."""
    answers = []
    for _ in range(2):
        model = case.factory()
        case.teach(model)
        answers.append(model.predict(case.items(7)))
    _assert_same(answers[0], answers[1], "same factory, same data")


@_check(_learns)
def check_state_round_trip(case: ModelCase) -> None:
    """state_dict -> load_state_dict on a fresh model: same answers, same learning after."""
    model = case.factory()
    assert hasattr(model, "state_dict") and hasattr(model, "load_state_dict"), (
        "a learning model needs state_dict() and load_state_dict() for checkpoints"
    )
    case.teach(model)
    state = decode_state(encode_state(model.state_dict()))  # as checkpoints store it
    other = case.factory()
    other.load_state_dict(state)  # type: ignore[attr-defined]
    rnd = model.tags.stochastic
    _assert_same(
        model.predict(case.items(8)), other.predict(case.items(8)), "restored", stochastic=rnd
    )
    more = case.items(9)
    for m in (model, other):
        _learn(m, more, case.labels(more))
    _assert_same(model.predict(case.items(8)), other.predict(case.items(8)), "then", stochastic=rnd)


@_check()
def check_pickle_round_trip(case: ModelCase) -> None:
    """A model pickles, and a copy rebuilt through pickle's protocol answers (and learns)
    like the original.

    Models travel by pickle to worker processes and Ray actors. The check never unpickles
    bytes: ``pickle.dumps`` shows the model serialises, and ``copy.deepcopy`` rebuilds it
    through the same ``__reduce_ex__`` / ``__getstate__`` / ``__setstate__`` an unpickler
    would use.
    """
    model = case.factory()
    case.teach(model)
    pickle.dumps(model)
    clone = copy.deepcopy(model)
    rnd = model.tags.stochastic
    _assert_same(
        model.predict(case.items(10)), clone.predict(case.items(10)), "unpickled", stochastic=rnd
    )
    if model.tags.learns_online:
        more = case.items(11)
        for m in (model, clone):
            _learn(m, more, case.labels(more))
        _assert_same(
            model.predict(case.items(10)), clone.predict(case.items(10)), "then", stochastic=rnd
        )


@_check(_learns)
def check_instances_independent(case: ModelCase) -> None:
    """Learning in one instance (or a deep copy) changes no other instance."""

    def lopsided(seed: int) -> list[Item]:  # one class only: shifts whatever was learned
        return case.make_items(case.n_items, seed, case.classes[:1])

    a, b = case.factory(), case.factory()
    untouched = b.predict(case.items(12))
    case.teach(a)
    more = lopsided(13)
    _learn(a, more, case.labels(more))
    rnd = a.tags.stochastic
    _assert_same(b.predict(case.items(12)), untouched, "sibling of a learner", stochastic=rnd)
    clone = copy.deepcopy(a)
    before = clone.predict(case.items(12))
    more = lopsided(14)
    _learn(a, more, case.labels(more))
    _assert_same(clone.predict(case.items(12)), before, "deep copy of a learner", stochastic=rnd)


@_check(lambda tags: tags.learns_online and tags.gives_probabilities)
def check_label_set_grows(case: ModelCase) -> None:
    """A label first seen mid-stream joins the classes; known classes keep their place."""
    model = case.factory()
    first = case.classes[:2]
    for seed in (20, 21):
        items = case.make_items(case.n_items, seed, first)
        _learn(model, items, case.labels(items))
    known = model.predict(case.items(22)).classes or ()
    assert set(first) <= set(known), f"classes {known} lack the learned {first}"
    new = "zzz_new_label"
    items = case.make_items(case.n_items, 23, (*first, new))
    _learn(model, items, case.labels(items))
    a = model.predict(case.make_items(case.n_items, 24, (*first, new)))
    classes = a.classes or ()
    assert new in classes, f"new label {new!r} missing from classes {classes}"
    assert classes[: len(known)] == known, f"known classes moved: {known} -> {classes}"
    assert a.probs is not None and a.probs.shape == (len(a), len(classes))
    assert np.allclose(a.probs.sum(axis=1), 1.0, atol=1e-6)


@_check()
def check_bounded_memory(case: ModelCase) -> None:
    """Memory stops growing over a long stream of predict (and learn) calls."""
    model = case.factory()
    learns = model.tags.learns_online

    def feed(r: int) -> None:
        items = case.items(1000 + r, case.stream_batch)
        model.predict(items)
        if learns:
            _learn(model, items, case.labels(items))

    for r in range(2):  # warm up: lazy allocations, caches filling to their bound
        feed(r)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for r in range(2, case.stream_rounds):
            feed(r)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    n = (case.stream_rounds - 2) * case.stream_batch
    assert grown <= case.memory_slack_bytes, (
        f"memory grew by {grown} bytes over {n} more items "
        f"(allowed {case.memory_slack_bytes}): does the model keep every item?"
    )


@_check(lambda tags: tags.asynchronous)
def check_apredict_matches_predict(case: ModelCase) -> None:
    """apredict gives the answers predict gives."""
    model = case.factory()
    a = asyncio.run(model.apredict(case.items(14)))  # type: ignore[attr-defined]
    b = model.predict(case.items(14))
    _assert_same(a, b, "apredict vs predict", stochastic=model.tags.stochastic)


# ------------------------------------------------------------------ finding
@runtime_checkable
class HasContractCase(Protocol):
    """A model class that says how the contract checks build it (small, offline)."""

    @classmethod
    def contract_case(cls) -> ModelCase: ...


def model_class(kind: str) -> type | None:
    """The class a registered model kind builds: its factory's return annotation (or the
    factory itself, when a class is registered); None when neither says."""
    from tiered.core.spec import MODELS

    factory = MODELS.get(kind)
    if factory is None or isinstance(factory, type):
        return factory
    try:
        returned = typing.get_type_hints(factory).get("return")
    except (NameError, TypeError):  # an annotation that cannot be resolved at run time
        return None
    return returned if isinstance(returned, type) else None


def contract_case(kind: str) -> ModelCase | None:
    """The contract case of model kind ``kind``, from its class's ``contract_case()``."""
    cls = model_class(kind)
    if cls is None or not isinstance(cls, HasContractCase):
        return None
    return cls.contract_case()


# ------------------------------------------------------------------ running
def model_checks(case: ModelCase) -> list[Check]:
    """The checks that apply to the case's model (by its tags), in a fixed order."""
    tags = case.factory().tags
    return [c for c in CHECKS.values() if c.applies(tags)]


def check_model(case: ModelCase) -> dict[str, str]:
    """Run every applicable check; returns ``{check: outcome}``.

    Raises ``AssertionError`` naming every check that failed unexpectedly, and every
    expected failure that passed (its entry in ``expected_failures`` is stale).
    """
    runs = {c.name: functools.partial(c.run, case) for c in model_checks(case)}
    return run_checks(f"model '{case.name}'", runs, case.expected_failures, CHECKS)


__all__ = [
    "CHECKS",
    "Check",
    "HasContractCase",
    "ModelCase",
    "check_model",
    "contract_case",
    "model_checks",
    "model_class",
]
