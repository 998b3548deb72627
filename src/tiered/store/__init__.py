"""State that outlives a process: SQLite (WAL) for checkpoints, stream offsets, response cache."""

from tiered.store.sqlite import connect

__all__ = ["connect"]
