"""An online cascade's state as plain data (JSON values and numpy arrays), and back.

The tree is what :mod:`tiered.store.state` encodes: nothing in it is ever unpickled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tiered.core.model import LearnableModel, StatefulModel
from tiered.errors import StoreError
from tiered.online.label_buffer import items_from_state, items_state

if TYPE_CHECKING:  # the cascade imports this module to save itself
    from tiered.online.cascade import OnlineCascade

STATE_VERSION = 1


def cascade_state(self: OnlineCascade) -> dict[str, Any]:
    """Everything needed to continue the stream exactly, as plain data (a tree of
    JSON values and numpy arrays, see :mod:`tiered.store.state`).

    Cheap models must offer ``state_dict()``/``load_state_dict()``; the expert's
    state (a response cache, say) is its own business.
    """
    models: list[dict[str, Any] | None] = []
    for stage in self.cheap:
        if isinstance(stage.model, StatefulModel):
            models.append(stage.model.state_dict())
        elif isinstance(stage.model, LearnableModel):
            raise StoreError(
                f"model of stage '{stage.name}' learns but has no state_dict(); "
                "its learned state cannot be saved"
            )
        else:
            models.append(None)
    return {
        "version": STATE_VERSION,
        "stage_names": self.stage_names,
        "config": self.config.model_dump(mode="json"),
        "seed": self.seed,
        "models": models,
        "trackers": [t.state_dict() for t in self.trackers],
        "heads": [h.state_dict() for h in self.heads],
        "replay": self.replay.state_dict(),
        "pending": (items_state(self.pending_items), list(self.pending_labels)),
        "controller": self.controller.state_dict(),
        "meter": self.meter.state_dict(),
        "rng": self.rng.bit_generator.state,
        "counters": {
            "n_items": self.n_items,
            "usd_spent": self.usd_spent,
            "expert_usd": self.expert_usd,
            "expert_calls": self.expert_calls,
            "explored": self.explored,
            "labels_learned": self.labels_learned,
            "refits": self.refits,
            "since_history": self._since_history,
        },
        "history": [dict(row) for row in self.history],
    }


def load_cascade_state(self: OnlineCascade, state: dict[str, Any]) -> None:
    """Restore a :func:`cascade_state` taken from a cascade built with the same stages."""
    if state.get("version") != STATE_VERSION:
        raise StoreError(
            f"online state has version {state.get('version')!r}; expected {STATE_VERSION}"
        )
    if state["stage_names"] != self.stage_names:
        raise StoreError(
            f"online state is for stages {state['stage_names']}; "
            f"this cascade has {self.stage_names}"
        )
    for stage, ms in zip(self.cheap, state["models"], strict=True):
        if ms is None:
            continue
        if not isinstance(stage.model, StatefulModel):
            raise StoreError(
                f"the saved state has learned state for stage '{stage.name}', "
                "whose model keeps none"
            )
        stage.model.load_state_dict(ms)
    for t, ts in zip(self.trackers, state["trackers"], strict=True):
        t.load_state_dict(ts)
    for h, hs in zip(self.heads, state["heads"], strict=True):
        h.load_state_dict(hs)
    self.replay.load_state_dict(state["replay"])
    items, labels = state["pending"]
    self.pending_items = items_from_state(items)
    self.pending_labels = list(labels)
    self.controller.load_state_dict(state["controller"])
    self.meter.load_state_dict(state["meter"])
    self.rng.bit_generator.state = state["rng"]
    c = state["counters"]
    self.n_items = int(c["n_items"])
    self.usd_spent = float(c["usd_spent"])
    self.expert_usd = float(c["expert_usd"])
    self.expert_calls = int(c["expert_calls"])
    self.explored = int(c["explored"])
    self.labels_learned = int(c["labels_learned"])
    self.refits = int(c["refits"])
    self._since_history = int(c["since_history"])
    self.history = [dict(row) for row in state["history"]]


__all__ = ["STATE_VERSION", "cascade_state", "load_cascade_state"]
