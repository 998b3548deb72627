"""State that outlives a process: SQLite (WAL) for checkpoints, stream offsets, response cache."""

from tiered.store.runs import Checkpoint, RunIdentity, RunStore
from tiered.store.sqlite import connect

__all__ = ["Checkpoint", "RunIdentity", "RunStore", "connect"]
