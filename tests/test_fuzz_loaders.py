"""Every loader, fuzzed: a clean located error or a valid result; no traceback, no hang.

Bounded and derandomized (the same examples each run); ``benchmarks/fuzz.py`` runs
thousands of cases per loader. The cases and the verdict live in ``tests/_fuzz.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests._fuzz import Loader, judge, loaders
from tests._fuzz_cli import cli_loaders

# a hang guard per case, far above what any case takes: not a timing assertion
_LIMIT_S = 60.0
_SETTINGS = {
    "database": None,
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
}


def _fuzz(loader: Loader, examples: int) -> None:
    @settings(max_examples=examples, **_SETTINGS)  # type: ignore[arg-type]
    @given(data=loader.files)
    def case(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / loader.filename
            path.write_bytes(data)
            verdict = judge(loader.check, path, _LIMIT_S)
            assert not verdict.finding, f"{loader.name}: {verdict.detail}\ninput: {data[:500]!r}"

    case()


@pytest.mark.parametrize("loader", loaders(), ids=lambda ld: ld.name)
def test_a_loader_gives_a_clean_located_error_or_a_valid_result(loader: Loader) -> None:
    _fuzz(loader, examples=40)


@pytest.mark.parametrize("loader", cli_loaders(), ids=lambda ld: ld.name)
def test_a_command_ends_in_success_or_one_located_error_line(loader: Loader) -> None:
    _fuzz(loader, examples=6)
