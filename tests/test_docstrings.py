"""Every docstring example in the package runs: an example that no longer works fails here."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import tiered


def _source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


MODULES = sorted(m.name for m in pkgutil.walk_packages(tiered.__path__, prefix="tiered."))
WITH_EXAMPLES = [name for name in MODULES if ">>>" in _source(name)]


def test_the_package_has_docstring_examples() -> None:
    # guards the collection itself: an empty list would make the test below pass vacuously
    assert len(WITH_EXAMPLES) >= 10


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' in its source but no docstring example was found"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
