"""``tiered serve CONFIG [CONFIG ...]``: the OpenAI-compatible gateway."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from tiered.cli.app import app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("serve")
def serve_cmd(
    configs: Annotated[
        list[Path],
        typer.Argument(
            metavar="CONFIG...",
            help="Gateway files (cascades, limits, keys, budgets) or plain cascade files.",
            show_default=False,
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 8080,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
    debug_log_prompts: Annotated[
        bool,
        typer.Option(
            "--debug-log-prompts",
            help="Also log every prompt and answer (never on by default: prompts are data).",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Load the files and build every cascade, then exit without serving.",
        ),
    ] = False,
) -> None:
    """Serve cascades behind the OpenAI API: /v1/chat/completions, /v1/completions,
    /v1/models, /v1/classify, /health and /metrics."""
    import logging

    from rich.console import Console
    from rich.markup import escape

    from tiered.serve import Gateway, load_gateway_config, run_server

    console = Console(stderr=True)
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # HTTP clients log every upstream request at INFO: one line per stage call is noise
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    config = load_gateway_config(configs)
    gateway = Gateway.from_config(config, debug_log_prompts=debug_log_prompts)
    if check:
        gateway.close()
        names = ", ".join(escape(c.name) for c in config.cascades)
        console.print(f"ok: {len(config.cascades)} cascade(s) built ({names})")
        return
    if not gateway.keys.enabled and not _is_loopback(host):
        console.print(
            f"[yellow]warning:[/] serving on {host} without API keys: anyone who can reach "
            "it can spend your upstream budget (set auth.keys_file or auth.keys_env)"
        )
    if debug_log_prompts:
        console.print("[yellow]warning:[/] --debug-log-prompts: prompts and answers go to the log")
    names = ", ".join(f"{c.name} ({c.task})" for c in gateway.cascades.values())
    console.print(f"serving {names} on http://{host}:{port}/v1")
    run_server(gateway, host=host, port=port, log_level=log_level.lower())


__all__ = ["serve_cmd"]
