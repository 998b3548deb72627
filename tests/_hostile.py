"""Hostile files for the "loading never runs code" tests: pickles that create a marker file."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np


class _Touch:
    """Unpickling this calls ``Path.touch(marker)``: what an attacker's payload would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def marker_pickle(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker`` (checked live: the tests can fail)."""
    blob = pickle.dumps({"state": _Touch(marker)}, protocol=pickle.HIGHEST_PROTOCOL)
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(_Touch(probe)))
    assert probe.exists(), "the hostile pickle does not run: the tests would prove nothing"
    probe.unlink()
    return blob


def marker_npy(marker: Path) -> bytes:
    """An ``.npy`` of an object array whose loading (with pickles allowed) creates ``marker``."""
    arr = np.empty(1, dtype=object)
    arr[0] = _Touch(marker)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


__all__ = ["marker_npy", "marker_pickle"]
