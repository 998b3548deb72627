"""The public surface is what we mean it to be: each package's ``__all__`` is pinned here.

A change to a package's exports is a change users see: update the list below on purpose (and
the CHANGELOG), never by accident.
"""

from __future__ import annotations

import importlib

import pytest

import tiered

SURFACE: dict[str, list[str]] = {
    "tiered": [
        "AnswerBatch",
        "Cascade",
        "CascadeResult",
        "CascadeSpec",
        "ConfigError",
        "DataError",
        "Decision",
        "Item",
        "Stage",
        "TieredError",
        "__version__",
        "load_cascade",
    ],
}

PACKAGES = [
    "tiered.calibrate",
    "tiered.checks",
    "tiered.config",
    "tiered.core",
    "tiered.eval",
    "tiered.online",
    "tiered.replay",
    "tiered.runner",
    "tiered.serve",
    "tiered.store",
    "tiered.testing",
]


def test_top_level_surface_is_pinned() -> None:
    assert tiered.__all__ == SURFACE["tiered"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_all_is_unique_and_importable(name: str) -> None:
    # (ruff's RUF022 keeps each __all__ sorted)
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), f"{name}.__all__ names a thing twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the package does not define: {missing}"


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports_no_private_names(name: str) -> None:
    module = importlib.import_module(name)
    private = [n for n in module.__all__ if n.startswith("_")]
    assert not private, f"{name}.__all__ exports private names: {private}"
