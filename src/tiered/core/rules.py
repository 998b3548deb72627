"""Deferral rules: given a stage's answers, which items does the stage answer?

Every rule returns a boolean *accept* mask; items not accepted are passed on to the
next stage. Rules are pydantic models with a ``kind`` tag, so they round-trip through
YAML (``rule.to_dict()`` / :func:`parse_rule`) and compose (``AllOf``, ``AnyOf``,
``Not``). Each rule says what it does in a line (``describe()``) and carries examples of
itself for the contract checks (``examples()``, see :mod:`tiered.checks`).

A subclass of :class:`DeferralRule` with a ``kind`` literal is registered in :data:`RULES`
when it is defined; :mod:`tiered.plugins` declares the modules of tiered's other rule kinds
(imported on first use), and another package adds kinds through the ``tiered.rules``
entry-point group (see :mod:`tiered.core.registry`).

An answer of ``None`` (no usable answer) is never accepted, and a missing signal (NaN)
defers: when in doubt, pass on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, SerializeAsAny, model_validator

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.registry import Registry
from tiered.core.signals import higher_is_confident, read_signal
from tiered.errors import ConfigError


@dataclass(slots=True)
class RuleContext:
    """What a rule may look at besides the stage's own answers.

    ``earlier`` maps each earlier stage's name to its labels for the same items, in the
    same order (``None`` where that stage gave no answer or did not run).
    """

    stage_name: str
    stage_index: int
    items: Sequence[Item] = ()
    earlier: Mapping[str, Sequence[str | None]] = field(default_factory=dict)


def _rule_class(kind: str, obj: object) -> type[DeferralRule]:
    if not (isinstance(obj, type) and issubclass(obj, DeferralRule)):
        raise TypeError(f"a rule kind must be a DeferralRule subclass; got {obj!r}")
    field = obj.model_fields.get("kind")
    if field is None or field.default != kind:
        raise TypeError(f"{obj.__name__} has kind {None if field is None else field.default!r}")
    return obj


RULES: Registry[type[DeferralRule]] = Registry("rule", "tiered.rules", _rule_class)


class DeferralRule(BaseModel):
    """Base class of all rules. Subclasses set ``kind`` and implement ``accept``;
    ``describe`` and ``examples`` make them readable and checkable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind_field = cls.model_fields.get("kind")
        default = None if kind_field is None else kind_field.default
        if isinstance(default, str):
            RULES.register(default, cls)

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        raise NotImplementedError

    def signals_needed(self) -> set[str]:
        """Names of the confidence signals this rule reads."""
        return set()

    def describe(self) -> str:
        """The rule in one line for people (``logprob >= -0.21``); this default lists the
        parameters that differ from their defaults."""
        params = self.model_dump(mode="json", exclude={"kind"}, exclude_defaults=True)
        return " ".join([self.kind, *(f"{k}={v}" for k, v in params.items())])

    @classmethod
    def examples(cls) -> list[Self]:
        """Instances of this rule for the contract checks (:mod:`tiered.checks`); a rule kind
        without any fails its contract test."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def __call__(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        mask: np.ndarray = np.asarray(self.accept(answers, ctx), dtype=bool) & answers.answered
        return mask


def parse_rule(spec: DeferralRule | Mapping[str, Any]) -> DeferralRule:
    """Build a rule from its dict form (``{"kind": "threshold", ...}``)."""
    if isinstance(spec, DeferralRule):
        return spec
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ConfigError(f"a rule must be a mapping with a 'kind'; got {spec!r}", field="rule")
    kind = str(spec["kind"])
    cls = RULES.get(kind)
    if cls is None:
        raise ConfigError(
            f"unknown rule kind '{kind}'; known kinds: {', '.join(RULES.kinds())} (a package "
            "adds kinds through the 'tiered.rules' entry-point group)",
            field="rule.kind",
        )
    return cls.model_validate(dict(spec))


AnyRule = Annotated[SerializeAsAny[DeferralRule], BeforeValidator(parse_rule)]


class Always(DeferralRule):
    """Accept every usable answer (the last stage's rule)."""

    kind: Literal["always"] = "always"

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return np.ones(len(answers), dtype=bool)

    def describe(self) -> str:
        return "always"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls()]


class Never(DeferralRule):
    """Pass every item on (a stage that only feeds later stages' agreement checks)."""

    kind: Literal["never"] = "never"

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return np.zeros(len(answers), dtype=bool)

    def describe(self) -> str:
        return "never (feeds agreement)"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls()]


class Threshold(DeferralRule):
    """Accept when the signal is at or above ``threshold`` (at or below for ``entropy``)."""

    kind: Literal["threshold"] = "threshold"
    signal: str
    threshold: float
    direction: Literal["above", "below"] | None = None

    @property
    def accepts_above(self) -> bool:
        if self.direction is None:
            return higher_is_confident(self.signal)
        return self.direction == "above"

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        s = read_signal(answers, self.signal)
        with np.errstate(invalid="ignore"):
            return s >= self.threshold if self.accepts_above else s <= self.threshold

    def signals_needed(self) -> set[str]:
        return {self.signal}

    def describe(self) -> str:
        return f"{self.signal} {'>=' if self.accepts_above else '<='} {self.threshold:.4g}"

    @classmethod
    def examples(cls) -> list[Self]:
        return [
            cls(signal="max_prob", threshold=0.6),
            cls(signal="entropy", threshold=0.9),
            cls(signal="logprob", threshold=-0.3, direction="below"),
        ]


class Window(DeferralRule):
    """Pass on only items whose signal lies in ``[lo, hi]``, near the decision boundary."""

    kind: Literal["window"] = "window"
    signal: str
    lo: float
    hi: float

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.lo > self.hi:
            raise ValueError(f"window needs lo <= hi; got lo={self.lo}, hi={self.hi}")
        return self

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        s = read_signal(answers, self.signal)
        with np.errstate(invalid="ignore"):
            return (s < self.lo) | (s > self.hi)

    def signals_needed(self) -> set[str]:
        return {self.signal}

    def describe(self) -> str:
        return f"{self.signal} outside [{self.lo:.4g}, {self.hi:.4g}]"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(signal="logprob", lo=-1.0, hi=-0.2)]


class Vote(DeferralRule):
    """Accept when at least ``min_share`` of the k samples equal their majority answer."""

    kind: Literal["vote"] = "vote"
    min_share: float

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return read_signal(answers, "vote") >= self.min_share

    def signals_needed(self) -> set[str]:
        return {"vote"}

    def describe(self) -> str:
        return f"vote >= {self.min_share:.3g}"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(min_share=0.6)]


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_CHOICE = re.compile(
    r"^\W*([A-H])(?![A-Za-z0-9])|answer is\W*([A-H])(?![A-Za-z0-9])", re.IGNORECASE
)


def _final_number(text: str) -> str | None:
    """The final numeric answer: after the last ``####`` if there is one, else the last number."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    raw: str = found[0 if "####" in text else -1].replace(",", "").replace("$", "")
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _choice(text: str) -> str | None:
    """The option letter an answer starts with (``A``, ``(B)``, ``C)``) or names (answer is D)."""
    m = _CHOICE.search(text)
    if m is None:
        return None
    return (m.group(1) or m.group(2)).upper()


# How Agreement may reduce an answer before comparing it (see ``Agreement.extract``).
ANSWER_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "final_number": _final_number,
    "choice": _choice,
}


def normalize_answer(
    x: str | None, extract: str | None = None, casefold: bool = True
) -> str | None:
    """An answer as ``Agreement`` compares it (None: no usable answer, never equal)."""
    if x is None:
        return None
    if extract is not None:
        x = ANSWER_EXTRACTORS[extract](x)
        if x is None:
            return None
    x = x.strip()
    return x.casefold() if casefold else x


class Agreement(DeferralRule):
    """Accept when this stage's answer equals an earlier stage's answer.

    ``stages`` names the earlier stages to compare with (all earlier ones when empty);
    ``min_agree`` is how many of them must agree. ``extract`` compares a part of each
    answer instead of the whole text: ``final_number`` (a math answer: the number after
    ``####``, else the last number) or ``choice`` (the option letter); an answer it finds
    nothing in agrees with nothing.
    """

    kind: Literal["agreement"] = "agreement"
    stages: list[str] = []
    min_agree: int = 1
    casefold: bool = True
    extract: Literal["final_number", "choice"] | None = None

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        names = self.stages or list(ctx.earlier)
        unknown = [s for s in names if s not in ctx.earlier]
        if unknown:
            raise ConfigError(
                f"agreement rule of stage '{ctx.stage_name}' names {unknown}, which are not "
                f"earlier stages; earlier stages: {list(ctx.earlier)}",
                field="rule.stages",
            )
        n = len(answers)
        if not names:
            return np.zeros(n, dtype=bool)

        def norm(x: str | None) -> str | None:
            return normalize_answer(x, self.extract, self.casefold)

        mine = [norm(x) for x in answers.labels]
        agree = np.zeros(n, dtype=int)
        for name in names:
            other = ctx.earlier[name]
            agree += np.fromiter(
                (m is not None and m == norm(o) for m, o in zip(mine, other, strict=True)),
                dtype=bool,
                count=n,
            )
        return agree >= self.min_agree

    def describe(self) -> str:
        who = ", ".join(self.stages) if self.stages else "an earlier stage"
        k = "" if self.min_agree == 1 else f"{self.min_agree} of "
        on = "" if self.extract is None else f" ({self.extract.replace('_', ' ')})"
        return f"agrees with {k}{who}{on}"

    @classmethod
    def examples(cls) -> list[Self]:
        # "cheap" is the earlier stage of the checks' sample context (tiered.checks.rules)
        return [cls(stages=["cheap"]), cls(extract="choice", casefold=False)]


class AllOf(DeferralRule):
    """Accept when every inner rule accepts."""

    kind: Literal["all_of"] = "all_of"
    rules: list[AnyRule]

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        mask = np.ones(len(answers), dtype=bool)
        for r in self.rules:
            mask &= r(answers, ctx)
        return mask

    def signals_needed(self) -> set[str]:
        return set().union(*(r.signals_needed() for r in self.rules))

    def describe(self) -> str:
        return " and ".join(r.describe() for r in self.rules)

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(rules=[Threshold(signal="margin", threshold=0.1), Vote(min_share=0.5)])]


class AnyOf(DeferralRule):
    """Accept when any inner rule accepts."""

    kind: Literal["any_of"] = "any_of"
    rules: list[AnyRule]

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        mask = np.zeros(len(answers), dtype=bool)
        for r in self.rules:
            mask |= r(answers, ctx)
        return mask

    def signals_needed(self) -> set[str]:
        return set().union(*(r.signals_needed() for r in self.rules))

    def describe(self) -> str:
        return " or ".join(r.describe() for r in self.rules)

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(rules=[Threshold(signal="entropy", threshold=0.9), Never()])]


class Not(DeferralRule):
    """Accept what the inner rule passes on."""

    kind: Literal["not"] = "not"
    rule: AnyRule

    def accept(self, answers: AnswerBatch, ctx: RuleContext) -> np.ndarray:
        return ~self.rule(answers, ctx)

    def signals_needed(self) -> set[str]:
        return self.rule.signals_needed()

    def describe(self) -> str:
        return f"not ({self.rule.describe()})"

    @classmethod
    def examples(cls) -> list[Self]:
        return [cls(rule=Threshold(signal="logprob", threshold=-0.5))]


def rule_kinds() -> list[str]:
    """Every rule kind known (tiered's, defined in code, and from installed plugins)."""
    return RULES.kinds()


__all__ = [
    "ANSWER_EXTRACTORS",
    "RULES",
    "Agreement",
    "AllOf",
    "Always",
    "AnyOf",
    "AnyRule",
    "DeferralRule",
    "Never",
    "Not",
    "RuleContext",
    "Threshold",
    "Vote",
    "Window",
    "normalize_answer",
    "parse_rule",
    "rule_kinds",
]
