"""The commands under fuzz: each runs in-process on the cases of the file it reads.

A case passes when the command succeeds, or exits 2 with one ``error:`` line naming the
case's file (or the other file of the case, a replay log); an exit 1 (the "internal
error" line), a traceback or several lines is a finding. Cases come from
:mod:`tests._fuzz`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from tests._fuzz import CASCADE, RUN_CONFIG, Loader, fixed_log, jsonl_lines, loaders, source_records


class CliFailure(Exception):
    """A command ended other than with success or one located ``error:`` line."""


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``tiered ARGV`` in this process: its exit code and what it wrote to stderr."""
    import io
    import sys
    from contextlib import redirect_stderr, redirect_stdout

    from tiered.cli import main

    err = io.StringIO()
    old = sys.argv
    sys.argv = ["tiered", *argv]
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, err.getvalue()


def cli_check(make_argv: Callable[[Path], list[str]]) -> Callable[[Path], None]:
    """A check running a command on the case: success, or exit 2 with one line naming it."""

    def check(path: Path) -> None:
        from tiered.errors import ConfigError

        code, err = run_cli(make_argv(path))
        if code == 0:
            return
        lines = err.strip().splitlines()
        # located: it names the case's file, or the other file of the case (a replay log)
        named = path.name in err or str(path.parent) in err
        if code == 2 and len(lines) == 1 and lines[0].startswith("error:") and named:
            raise ConfigError(lines[0], path=path)  # the clean, located error wanted
        raise CliFailure(f"exit {code}: {err[-2000:]}")

    return check


def _with_fixed_log(path: Path) -> Path:
    fixed_log(path.parent)
    return path.parent / "fixed.jsonl"


CLI_CHECKS: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
    # name: (the loader whose cases it takes, argv for a case)
    "tiered calibrate": (
        "replay log",
        lambda p: ["calibrate", str(p), "-o", str(p.with_suffix(".yaml")), "--folds", "0"],
    ),
    "tiered calibrate (extreme)": (
        "replay log (extreme)",
        lambda p: ["calibrate", str(p), "-o", str(p.with_suffix(".yaml")), "--folds", "2"],
    ),
    "tiered inspect": ("replay log", lambda p: ["inspect", str(p)]),
    "tiered eval (log)": (
        "replay log",
        lambda p: ["eval", str(_cascade_for(p)), str(p)],
    ),
    "tiered eval (cascade)": (
        "cascade YAML",
        lambda p: ["eval", str(p), str(_with_fixed_log(p))],
    ),
    "tiered inspect (cascade)": (
        "cascade YAML",
        lambda p: ["inspect", str(p), str(_with_fixed_log(p))],
    ),
    "tiered run": (
        "run YAML",
        lambda p: ["run", str(p), str(_input_for(p)), "-o", str(p.parent / "out.jsonl")],
    ),
    "tiered run (input)": (
        "JSONL source",
        lambda p: ["run", str(_run_config_for(p)), str(p), "-o", str(p.parent / "out.jsonl")],
    ),
    "tiered serve --check": ("gateway YAML", lambda p: ["serve", "--check", str(p)]),
}


def _cascade_for(path: Path) -> Path:
    out = path.parent / "fixed_cascade.yaml"
    out.write_text(yaml.safe_dump(CASCADE), encoding="utf-8")
    return out


def _input_for(path: Path) -> Path:
    out = path.parent / "in.jsonl"
    if not out.exists():
        out.write_bytes(jsonl_lines(source_records()))
    return out


def _run_config_for(path: Path) -> Path:
    out = path.parent / "fixed_run.yaml"
    out.write_text(yaml.safe_dump(RUN_CONFIG), encoding="utf-8")
    return out


def cli_loaders() -> list[Loader]:
    """Each command run on the cases of the loader it reads (as a user would meet them)."""
    by_name = {ld.name: ld for ld in loaders()}
    return [
        Loader(name, by_name[source].files, by_name[source].filename, cli_check(argv))
        for name, (source, argv) in CLI_CHECKS.items()
    ]
