"""Label sets and answer normalisers shared by the LLM stages.

A normaliser turns a model's free-text answer into the form answers are compared in
(votes, verification, labels). Configs name one from a registry: ``exact``,
``casefold``, ``number``, ``choice``, or any name a plugin registered with
:func:`register_normalizer`. Nothing else is resolved: a config file never names an
importable callable (``"os:system"`` would run a model's answer as a command).

>>> normalize_number("It costs $1,234.50")
'1234.5'
>>> LabelSet(["fresh", "rotten"], {"fresh": "positive"}).index_of_text("Positive!")
0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tiered.errors import ConfigError

Normalizer = Callable[[str], str | None]
_NORMALIZERS: dict[str, Normalizer] = {}


def register_normalizer(name: str) -> Callable[[Normalizer], Normalizer]:
    """Register an answer normaliser under ``name`` (for ``normalizer: NAME`` in configs)."""

    def deco(fn: Normalizer) -> Normalizer:
        _NORMALIZERS[name] = fn
        return fn

    return deco


def normalizer_names() -> list[str]:
    """The registered normaliser names, sorted."""
    return sorted(_NORMALIZERS)


_EDGE_PUNCT = " \t\r\n\"'`.,;:!?()[]{}*"


@register_normalizer("exact")
def normalize_exact(text: str) -> str | None:
    """The answer as given, surrounding whitespace removed."""
    s = text.strip()
    return s or None


@register_normalizer("casefold")
def normalize_casefold(text: str) -> str | None:
    """Case-folded, inner whitespace collapsed, punctuation and quotes at the edges removed."""
    s = " ".join(text.split()).strip(_EDGE_PUNCT).casefold()
    return s or None


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@register_normalizer("number")
def normalize_number(text: str) -> str | None:
    """The last number in the answer, canonical: "1,234.50" → "1234.5", "7.0" → "7"."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "").replace("$", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_CHOICE_PATTERNS = (
    re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?(?:[.):\s]|$)"),
    re.compile(r"\(([A-J])\)"),
)


@register_normalizer("choice")
def normalize_choice(text: str) -> str | None:
    """A multiple-choice letter A–J: ``"(B)"``, ``"B."``, ``"The answer is b"`` → ``"B"``."""
    for pat in _CHOICE_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1).upper()
    return None


def resolve_normalizer(spec: str | Normalizer) -> Normalizer:
    """A normaliser: a callable as given, or one registered under the name ``spec``.

    A name that is not registered is a :class:`ConfigError`, whatever it looks like:
    ``module:function`` paths are refused, so a config can never name arbitrary code.
    """
    if callable(spec):
        return spec
    fn = _NORMALIZERS.get(spec)
    if fn is not None:
        return fn
    hint = (
        " (importable paths are not accepted; register the function with "
        "tiered.models.llm.register_normalizer)"
        if ":" in spec
        else ""
    )
    raise ConfigError(
        f"unknown normalizer {spec[:80]!r}; known: {', '.join(normalizer_names())}{hint}",
        field="model.normalizer",
    )


def check_label_words(words: Mapping[str, str], labels: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every label's word is non-empty and distinct (ignoring case)."""
    keys = [normalize_casefold(words.get(x, x)) for x in labels]
    if None in keys or len(set(keys)) != len(keys):
        raise ValueError("label words must be distinct and non-empty (ignoring case)")


class LabelSet:
    """Labels, the words a model says for them, and matching of answers and tokens to them."""

    def __init__(self, labels: Sequence[str], words: Mapping[str, str] | None = None) -> None:
        self.labels = tuple(labels)
        words = words or {}
        self.words = tuple(words.get(lab, lab) for lab in self.labels)
        self._keys = tuple(normalize_casefold(w) or w for w in self.words)
        lookup: dict[str, int] = {}
        for i, (lab, key) in enumerate(zip(self.labels, self._keys, strict=True)):
            lookup.setdefault(key, i)
            lookup.setdefault(normalize_casefold(lab) or lab, i)
        self._lookup = lookup
        self._token_cache: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"LabelSet(labels={list(self.labels)}, words={list(self.words)})"

    def word_of(self, label: str) -> str:
        """The word the model says for ``label``."""
        return self.words[self.labels.index(label)]

    def index_of_text(self, text: str) -> int | None:
        """The label an answer names (exact after casefolding, or its leading word), or None."""
        key = normalize_casefold(text)
        if key is None:
            return None
        hit = self._lookup.get(key)
        if hit is not None:
            return hit
        # "Positive sentiment" / "positive, because ...": the answer starts with a label word
        best = None
        for cand, i in self._lookup.items():
            starts = key.startswith(cand) and not key[len(cand) : len(cand) + 1].isalnum()
            if starts and (best is None or len(cand) > len(best[0])):
                best = (cand, i)
        return None if best is None else best[1]

    def label_of_text(self, text: str) -> str | None:
        """The label an answer names, or None when it names none."""
        i = self.index_of_text(text)
        return None if i is None else self.labels[i]

    def index_of_token(self, token: str) -> int:
        """The one label whose word this token begins (-1: none or ambiguous)."""
        hit = self._token_cache.get(token)
        if hit is not None:
            return hit
        key = token.strip().casefold()
        found = -1
        if key:
            matches = {
                i
                for i, w in enumerate(self._keys)
                if w.startswith(key)
                or (key.startswith(w) and not key[len(w) : len(w) + 1].isalnum())
            }
            if len(matches) == 1:
                found = matches.pop()
        self._token_cache[token] = found
        return found

    def mass(self, top: Mapping[str, float]) -> np.ndarray:
        """Probability mass per label from one position's ``{token: logprob}`` alternatives."""
        out = np.zeros(len(self.labels))
        for token, lp in top.items():
            i = self.index_of_token(token)
            if i >= 0 and lp is not None and math.isfinite(lp):
                out[i] += math.exp(lp)
        return out


__all__ = [
    "LabelSet",
    "Normalizer",
    "check_label_words",
    "normalize_casefold",
    "normalize_choice",
    "normalize_exact",
    "normalize_number",
    "normalizer_names",
    "register_normalizer",
    "resolve_normalizer",
]
