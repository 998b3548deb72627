"""Gateway errors and the one function that turns any exception into an OpenAI error.

    TieredError
    └── GatewayError                 a request the gateway refuses or cannot finish
        ├── InvalidRequestError      400  (also pydantic validation errors)
        ├── AuthenticationError      401
        ├── BudgetDeniedError        402  the key's USD budget cannot cover the request
        ├── ModelNotFoundError       404  param "model"
        ├── RequestTimeoutError      408  the request body did not arrive in time
        ├── PayloadTooLargeError     413  body, message or batch over its limit
        ├── OverloadedError          429  in-flight limit reached (Retry-After)
        ├── NoAnswerError            502  the last stage gave no usable answer
        ├── SharedStateError         503  replicas' shared Redis unreachable (Retry-After)
        └── DeadlineExceededError    504  the request's deadline passed

Errors raised by the stages (``tiered.errors``) map too: an upstream timeout is a 504,
an upstream rate limit a 429 with the upstream's Retry-After (1 s when it gave none),
any other upstream failure a 502, a model's own spending cap a 402. Anything else is a
500 whose message says nothing about the request (the details go to the server log).

Budget exhaustion is a 402, not OpenAI's 429 ``insufficient_quota``: clients (the
official one included) retry 429s, and retrying cannot help an exhausted budget.
"""

from __future__ import annotations

import math

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from tiered.errors import (
    BudgetExceededError,
    ModelError,
    RateLimitError,
    TieredError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tiered.serve.protocol import ErrorInfo, ErrorResponse


class GatewayError(TieredError):
    """A request the gateway refuses or cannot finish; carries its HTTP status."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class BudgetDeniedError(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTimeoutError(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class OverloadedError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class NoAnswerError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "no_answer"


class SharedStateError(GatewayError):
    status = 503
    type = "server_error"
    code = "shared_state_unavailable"


class DeadlineExceededError(GatewayError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


def _validation_error(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """Message and param of the first validation error; never echoes the input value."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    err = errors[0]
    # FastAPI prefixes "body"; the OpenAI param is the path inside the body
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid value"))
    more = len(errors) - 1
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return (f"{param}: {msg}{tail}" if param else f"{msg}{tail}"), param


def error_response(exc: BaseException) -> tuple[int, ErrorResponse, dict[str, str]]:
    """HTTP status, OpenAI error body and extra headers for any exception."""
    status: int
    headers: dict[str, str] = {}
    param: str | None = None
    code: str | None = None
    if isinstance(exc, GatewayError):
        status, typ, msg = exc.status, exc.type, exc.message
        param, code, headers = exc.param, exc.code, dict(exc.headers)
    elif isinstance(exc, ValidationError | RequestValidationError):
        msg, param = _validation_error(exc)
        status, typ, code = 400, "invalid_request_error", "invalid_value"
    elif isinstance(exc, BudgetExceededError):
        status, typ, code, msg = 402, "insufficient_quota", "upstream_budget_exhausted", str(exc)
    elif isinstance(exc, RateLimitError):
        status, typ, code, msg = 429, "rate_limit_error", "upstream_rate_limited", str(exc)
        # the upstream's own Retry-After (whole seconds, rounded up), else one second
        wait = exc.retry_after_s
        headers["retry-after"] = str(max(1, math.ceil(wait))) if wait is not None else "1"
    elif isinstance(exc, UpstreamTimeoutError):
        status, typ, code, msg = 504, "timeout_error", "upstream_timeout", str(exc)
    elif isinstance(exc, UpstreamError):
        status, typ, code, msg = 502, "upstream_error", "upstream_error", str(exc)
    elif isinstance(exc, ModelError):
        status, typ, code, msg = 502, "upstream_error", "model_error", str(exc)
    elif isinstance(exc, HTTPException):
        status, typ, msg = exc.status_code, "invalid_request_error", str(exc.detail)
        code = "not_found" if status == 404 else None
        headers = dict(exc.headers or {})
    else:
        # a bug or a misconfigured cascade (TieredError): details to the log, not the client
        kind = "configuration" if isinstance(exc, TieredError) else "internal"
        status, typ, msg = 500, "server_error", f"{kind} error in the gateway; see its log"
    body = ErrorResponse(error=ErrorInfo(message=msg, type=typ, param=param, code=code))
    return status, body, headers


__all__ = [
    "AuthenticationError",
    "BudgetDeniedError",
    "DeadlineExceededError",
    "GatewayError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NoAnswerError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "SharedStateError",
    "error_response",
]
