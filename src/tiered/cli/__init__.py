"""Command-line interface: ``tiered calibrate | eval | inspect | run | serve | demo``.

Each command lives in its own module and registers itself on :data:`app`; heavy imports
happen inside the commands so that ``tiered --help`` stays fast.
"""

from __future__ import annotations

import sys

from tiered.cli import calibrate as calibrate  # registers `tiered calibrate`
from tiered.cli import demo as demo  # registers `tiered demo`
from tiered.cli import evaluate as evaluate  # registers `tiered eval`
from tiered.cli import inspect_cascade as inspect_cascade  # `tiered inspect cascade.yaml [LOG]`
from tiered.cli import inspect_log as inspect_log  # registers `tiered inspect`
from tiered.cli import run as run  # registers `tiered run`
from tiered.cli import serve as serve  # registers `tiered serve`
from tiered.cli.app import app
from tiered.errors import TieredError


def main() -> None:
    """Entry point: run the app; a TieredError prints one clear line and exits 2."""
    from rich.console import Console

    try:
        app()
    except TieredError as exc:
        # soft_wrap: one line even when stderr is not a terminal (rich would wrap at 80)
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "main"]
