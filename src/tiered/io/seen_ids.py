"""The ids a run has seen, in bounded memory: 8 bytes per id, batch at a time.

A run must answer each input id once, so a record whose id came before is rejected. A
Python ``set`` of the id strings would cost ~100 bytes per id (1 GB for a 10M-record
run); :class:`SeenIds` keeps a 64-bit hash per id instead, in a few sorted numpy arrays
whose sizes at least double from the newest to the oldest (a log-structured merge): 80 MB
for 10M ids, membership by binary search in each array (O(log² n) per batch item),
insertion amortised O(log n) per id.

Two different ids share a 64-bit hash with probability about n²/2⁶⁵: once in ~300,000
runs of 10M records. Then the later one is rejected as a duplicate (in the reject file,
never lost silently). The hashes are Python's own string hash, salted per process, so a
crafted input cannot aim for collisions; the set never leaves the process (a resumed run
rebuilds it from the records it already answered).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SeenIds:
    """A set of id hashes; :meth:`add` tells which ids of a batch were seen before."""

    def __init__(self) -> None:
        self._levels: list[np.ndarray] = []  # sorted int64 arrays, oldest (largest) first

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self._levels)

    def add(self, ids: Sequence[str]) -> np.ndarray:
        """Add ``ids``; True where an id was seen before (earlier calls or earlier in ``ids``)."""
        n = len(ids)
        seen = np.ones(n, dtype=bool)
        if n == 0:
            return seen
        hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=n)
        uniq, first = np.unique(hashes, return_index=True)
        old = np.zeros(len(uniq), dtype=bool)
        for level in self._levels:
            pos = np.searchsorted(level, uniq)
            pos[pos == len(level)] = len(level) - 1
            old |= level[pos] == uniq
        seen[first[~old]] = False
        self._push(uniq[~old])
        return seen

    def _push(self, new: np.ndarray) -> None:
        if not len(new):
            return
        levels = self._levels
        levels.append(new)
        # merge while the newest array is at least half the one before: sizes at least
        # double towards the oldest, so there are O(log n) arrays
        while len(levels) > 1 and 2 * len(levels[-1]) >= len(levels[-2]):
            top = levels.pop()
            merged = np.concatenate([levels.pop(), top])
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in O(n)
            levels.append(merged)


__all__ = ["SeenIds"]
