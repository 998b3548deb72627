"""Run the command line in-process, as a user would."""

from __future__ import annotations

import sys

import pytest

from tiered.cli import main


def tiered(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``tiered ARGS`` in this process; return (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["tiered", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err
