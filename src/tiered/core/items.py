"""What flows into a cascade: one request per ``Item``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(slots=True)
class Item:
    """One request: an id, its input (text or chat messages) and any extra input fields.

    ``cache`` holds features computed during the item's trip through the cascade (an
    embedding, say) so that a later stage does not compute them again. ``params`` are the
    generation parameters the caller asked for (``max_tokens``, ``temperature``, ``top_p``,
    ``stop``, ``seed``: the gateway puts a client's here); text-generating stages honour them.
    """

    id: str
    input: str | list[Message]
    fields: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The input as one string (chat messages joined by newlines)."""
        if isinstance(self.input, str):
            return self.input
        return "\n".join(str(m.get("content", "")) for m in self.input)


def as_items(inputs: Sequence[Item | str]) -> list[Item]:
    """Wrap plain strings as items with their position as id."""
    return [x if isinstance(x, Item) else Item(id=str(i), input=x) for i, x in enumerate(inputs)]
