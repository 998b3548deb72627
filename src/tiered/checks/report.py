"""Running a set of checks with known gaps: each gap is an expected failure, never a skip."""

from __future__ import annotations

from collections.abc import Callable, Mapping


def run_checks(
    subject: str,
    checks: Mapping[str, Callable[[], None]],
    expected_failures: Mapping[str, str],
    known: Mapping[str, object],
) -> dict[str, str]:
    """Run ``checks`` (name -> a call raising ``AssertionError``); returns ``{name: outcome}``.

    A check listed in ``expected_failures`` (``{name: reason}``) still runs and must fail.
    Raises ``AssertionError`` naming every check of ``subject`` that failed unexpectedly
    and every expected failure that passed (its entry is stale); ``ValueError`` when
    ``expected_failures`` names a check that is not in ``known``.
    """
    unknown = sorted(set(expected_failures) - set(known))
    if unknown:
        raise ValueError(f"expected_failures names unknown checks: {unknown}")
    report: dict[str, str] = {}
    problems: list[str] = []
    for name, run in checks.items():
        reason = expected_failures.get(name)
        try:
            run()
        except AssertionError as exc:
            if reason is None:
                report[name] = f"FAILED: {exc}"
                problems.append(f"{name}: {exc}")
            else:
                report[name] = f"xfail: {reason}"
            continue
        if reason is None:
            report[name] = "passed"
        else:
            report[name] = "XPASS"
            problems.append(f"{name}: passes, but is listed as a known gap ({reason})")
    if problems:
        raise AssertionError(f"{subject} breaks its contract:\n- " + "\n- ".join(problems))
    return report


__all__ = ["run_checks"]
