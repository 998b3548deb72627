"""The installed tiered's version (pyproject.toml is its one source).

A module of its own at the bottom of the layers, so that any part (the CLI's
``--version``, a report's header) can say it without importing the whole package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version() -> str:
    """The version of the installed ``tiered`` distribution."""
    try:
        return version("tiered")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = installed_version()

__all__ = ["__version__", "installed_version"]
