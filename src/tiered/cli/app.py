"""The typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tiered",
    help="Answer each request with the cheapest model that can answer it well.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
