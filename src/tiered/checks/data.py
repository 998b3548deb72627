"""Small deterministic data for the contract checks: no files, no network."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tiered.core.items import Item

TOY_CLASSES = ("sports", "markets", "weather")

_VOCAB = {
    "sports": [
        "match",
        "goal",
        "team",
        "coach",
        "league",
        "striker",
        "season",
        "final",
        "cup",
        "referee",
    ],
    "markets": [
        "stocks",
        "shares",
        "bond",
        "yield",
        "index",
        "rally",
        "investors",
        "earnings",
        "fed",
        "traders",
    ],
    "weather": [
        "rain",
        "storm",
        "forecast",
        "sunny",
        "snow",
        "wind",
        "cloudy",
        "heatwave",
        "flood",
        "temperature",
    ],
}
_FILLER = ["the", "a", "on", "after", "over", "with", "says", "new", "today", "report"]


def marker(seed: int, i: int) -> str:
    """A token that appears in exactly one toy item's text (to look for copies of it)."""
    return f"mk{seed:05d}q{i:05d}z"


def _words(label: str) -> list[str]:
    if label in _VOCAB:
        return _VOCAB[label]
    # a label without a vocabulary gets its own made-up words, still learnable
    return [f"{label}{k}" for k in range(8)]


def toy_items(n: int, seed: int = 0, classes: Sequence[str] = TOY_CLASSES) -> list[Item]:
    """``n`` short texts cycling through ``classes``, label in ``fields["label"]``.

    Each text has a few words of its class, filler words and a unique marker token.
    Same arguments, same items.
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, 10, size=(n, 3))  # every vocabulary has at least 8 words
    fill = rng.choice(_FILLER, size=(n, 2))
    order = rng.permuted(np.tile(np.arange(5), (n, 1)), axis=1)
    items = []
    for i in range(n):
        label = classes[i % len(classes)]
        vocab = _words(label)
        words = [vocab[j % len(vocab)] for j in picks[i]] + list(fill[i])
        text = " ".join([*(words[j] for j in order[i]), marker(seed, i)])
        items.append(Item(id=f"toy/{seed}/{i}", input=text, fields={"label": label}))
    return items


__all__ = ["TOY_CLASSES", "marker", "toy_items"]
