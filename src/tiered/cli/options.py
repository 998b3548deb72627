"""Command-line options that several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SkipBad = Annotated[
    bool,
    typer.Option("--skip-bad", help="Skip bad log lines (to the reject file) instead of failing."),
]
Rejects = Annotated[
    Path | None,
    typer.Option("--rejects", help="Reject file for --skip-bad (default: ./<log>.rejects.jsonl)."),
]
