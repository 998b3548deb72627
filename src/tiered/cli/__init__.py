"""The command line: ``tiered`` batch, calibrate, demo, eval, inspect, report, run, serve.

Each command lives in its own module and registers itself on :data:`app`; heavy imports
happen inside the commands so that ``tiered --help`` stays fast.

Exit codes: 0 done, 2 a problem with the input (one ``error:`` line naming file, line and
field), 1 a failure tiered did not expect (one line asking for a report; the traceback
only with ``TIERED_DEBUG=1``), 130 interrupted.
"""

from __future__ import annotations

import os
import sys

from tiered.cli import batch as batch  # registers `tiered batch`
from tiered.cli import calibrate as calibrate  # registers `tiered calibrate`
from tiered.cli import demo as demo  # registers `tiered demo`
from tiered.cli import evaluate as evaluate  # registers `tiered eval`
from tiered.cli import inspect_cascade as inspect_cascade  # `tiered inspect cascade.yaml [LOG]`
from tiered.cli import inspect_log as inspect_log  # registers `tiered inspect`
from tiered.cli import report as report  # registers `tiered report`
from tiered.cli import run as run  # registers `tiered run`
from tiered.cli import serve as serve  # registers `tiered serve`
from tiered.cli.app import app
from tiered.errors import TieredError

DEBUG_ENV = "TIERED_DEBUG"


def _say(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: one line even when stderr is not a terminal (rich would wrap at 80)
    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )


def _unexpected(exc: BaseException) -> str:
    """One line for an exception tiered did not expect: what it was, and what to do."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    what = f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
    if isinstance(exc, MemoryError):
        return "out of memory (the input or a setting is too large for this machine)"
    return (
        f"internal error ({what}). This is a bug in tiered: please report it with the command "
        f"you ran (SECURITY.md says how); set {DEBUG_ENV}=1 to see the traceback"
    )


def main() -> None:
    """Entry point: run the app; a TieredError prints one clear line and exits 2.

    Anything else (a bug) prints one line asking for a report and exits 1; with
    ``TIERED_DEBUG=1`` it is raised as is, traceback and all.
    """
    try:
        app()
    except TieredError as exc:
        _say(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
    except OSError as exc:
        # the machine said no (disk full, permission denied, a path under a file): the
        # user's to fix, not a bug; name the path when the OS gave it
        if os.environ.get(DEBUG_ENV):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}")
        sys.exit(2)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        _say(_unexpected(exc))
        sys.exit(1)


__all__ = ["app", "main"]
