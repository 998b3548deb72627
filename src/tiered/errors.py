"""The one exception tree of tiered.

    TieredError
    ├── ConfigError            a config or cascade file is wrong (names file, line, field)
    ├── DataError              an input or replay record is wrong (names file, line, field)
    ├── SignalMissingError     a deferral rule needs a confidence signal the answers lack
    ├── ModelError             a model could not answer
    │   ├── UpstreamError      an HTTP/LLM backend failed (status, retryable)
    │   │   ├── RateLimitError
    │   │   └── UpstreamTimeoutError
    │   └── BudgetExceededError  answering would spend more than the configured cap
    └── StoreError             the state store failed or holds incompatible state

Backend exceptions are translated at the boundary and raised ``from`` the original.
"""

from __future__ import annotations

from pathlib import Path


class TieredError(Exception):
    """Base class of every error tiered raises on purpose."""


def _locate(message: str, path: str | Path | None, line: int | None, field: str | None) -> str:
    where = []
    if path is not None:
        where.append(str(path) if line is None else f"{path}:{line}")
    elif line is not None:
        where.append(f"line {line}")
    if field:
        where.append(f"field '{field}'")
    return f"{', '.join(where)}: {message}" if where else message


class _Located(TieredError):
    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(_locate(message, path, line, field))


class ConfigError(_Located):
    """A config or cascade file (or a parameter) is invalid."""


class DataError(_Located):
    """An input record or replay-log line is invalid."""


class SignalMissingError(TieredError):
    """A deferral rule needs a confidence signal that the stage's answers do not carry."""


class ModelError(TieredError):
    """A model could not produce answers."""


class UpstreamError(ModelError):
    """A remote backend failed. ``status`` is the HTTP status when there was one.

    ``retry_after_s`` is the wait the backend asked for (its ``Retry-After``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(message)


class RateLimitError(UpstreamError):
    """The backend answered 429."""


class UpstreamTimeoutError(UpstreamError):
    """The backend did not answer in time."""


class BudgetExceededError(ModelError):
    """Answering would exceed the configured spending cap."""


class StoreError(TieredError):
    """The state store failed or holds state that does not fit this run."""


__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "DataError",
    "ModelError",
    "RateLimitError",
    "SignalMissingError",
    "StoreError",
    "TieredError",
    "UpstreamError",
    "UpstreamTimeoutError",
]
