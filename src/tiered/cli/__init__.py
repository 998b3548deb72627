"""Command-line interface: ``tiered calibrate | eval | inspect | run | serve | demo``.

Each command lives in its own module and registers itself on :data:`app`; heavy imports
happen inside the commands so that ``tiered --help`` stays fast.
"""

from __future__ import annotations

import sys

from tiered.cli.app import app
from tiered.errors import TieredError


def main() -> None:
    """Entry point: run the app; a TieredError prints one clear line and exits 2."""
    from rich.console import Console

    try:
        app()
    except TieredError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


__all__ = ["app", "main"]
