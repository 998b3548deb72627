"""The typer application every command module registers on, and ``tiered --version``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
import typer.core

app = typer.Typer(
    name="tiered",
    help="Answer each request with the cheapest model that can answer it well.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _plain_flags() -> None:
    """Show no value type after a flag in ``--help`` (``--fresh``, not ``--fresh <bool>``).

    typer prints ``<bool>`` after every flag, which reads as if the flag took a value;
    a flag takes none, so it gets no type column.
    """
    option = typer.core.TyperOption
    shown = option.display_type_rich
    if getattr(shown, "_tiered_plain_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return shown(self, ctx)

    display_type_rich._tiered_plain_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()


def _print_version(value: bool) -> None:
    if value:
        from tiered.version import __version__

        typer.echo(f"tiered {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print tiered's version and exit.",
        ),
    ] = False,
) -> None:
    """Answer each request with the cheapest model that can answer it well."""
