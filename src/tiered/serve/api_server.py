"""The FastAPI app: thin routers over the serving classes, one error mapping, metrics.

Routers authenticate, read the body (bounded by ``max_body_bytes`` and
``body_timeout_s``), call a serving class and write its answer; every exception becomes
an OpenAI error through :func:`tiered.serve.errors.error_response`. Bodies are parsed
with pydantic straight from bytes and answers written as pre-serialized JSON: the
gateway's own time per request is what users pay on top of their upstreams, so the hot
path skips FastAPI's dependency and response-model machinery, and the three POST
endpoints are dispatched by a pure ASGI middleware (:class:`_HotRoutes`) before FastAPI's
router and its layers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiered.errors import TieredError
from tiered.serve.auth import Principal
from tiered.serve.errors import PayloadTooLargeError, RequestTimeoutError, error_response
from tiered.serve.gateway import Gateway, new_request_id
from tiered.serve.metrics import GatewayMetrics
from tiered.serve.protocol import ChatCompletionRequest, ClassifyRequest, CompletionRequest
from tiered.serve.serving_base import ServedResponse
from tiered.serve.serving_chat import OpenAIServingChat
from tiered.serve.serving_classify import OpenAIServingClassify
from tiered.serve.serving_completion import OpenAIServingCompletion
from tiered.serve.serving_models import OpenAIServingModels

logger = logging.getLogger("tiered.serve")

M = TypeVar("M", bound=BaseModel)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_JSON = "application/json"

router = APIRouter()


# --------------------------------------------------------------------------- helpers


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _begin(request: Request, *, auth: bool = True) -> tuple[str, Principal | None]:
    """Request id (the client's ``x-request-id`` when sane) and the authenticated caller."""
    given = request.headers.get("x-request-id")
    rid = given if given and _REQUEST_ID.match(given) else new_request_id()
    request.state.request_id = rid
    request.state.t0 = time.perf_counter()
    principal = (
        _gateway(request).authenticate(request.headers.get("authorization")) if auth else None
    )
    request.state.principal = principal
    return rid, principal


async def _read(request: Request, model: type[M]) -> M:
    """The body parsed as ``model``; 413 past ``max_body_bytes`` (checked as it arrives),
    408 when it has not all arrived within ``body_timeout_s``."""
    server = _gateway(request).server
    limit = server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes; the limit is {limit:,}")
    body = bytearray()
    try:
        async with asyncio.timeout(server.body_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLargeError(f"request body over the limit of {limit:,} bytes")
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {server.body_timeout_s:g} s",
            headers={"connection": "close"},  # the rest of the body is not waited for
        ) from None
    parsed = model.model_validate_json(bytes(body))
    request.state.model = getattr(parsed, "model", None)
    return parsed


def _respond(
    request: Request, served: ServedResponse, endpoint: str, prompt: Any = None
) -> Response:
    gw = _gateway(request)
    common = {
        "request_id": request.state.request_id,
        "endpoint": endpoint,
        "principal": request.state.principal,
        "model": request.state.model,
        "prompt": prompt,
    }
    if served.stream is None:
        assert served.body is not None
        ex = served.execution
        gw.log_request(
            status=200,
            seconds=time.perf_counter() - request.state.t0,
            execution=ex,
            answer=[o.label for o in ex.outcomes] if ex else None,
            **common,
        )
        return Response(served.body.model_dump_json(), media_type=_JSON, headers=served.headers)

    async def logged() -> AsyncIterator[bytes]:
        assert served.stream is not None
        async for chunk in served.stream:
            yield chunk
        ex = served.execution
        err = served.error
        gw.log_request(
            status=200,
            seconds=time.perf_counter() - request.state.t0,
            execution=ex,
            error=None if err is None else error_response(err)[1].error.code or "error",
            answer=[o.label for o in ex.outcomes] if ex else None,
            **common,
        )

    headers = {"cache-control": "no-cache", **served.headers}
    return StreamingResponse(logged(), media_type="text/event-stream", headers=headers)


# --------------------------------------------------------------------------- routes


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    rid, principal = _begin(request)
    body = await _read(request, ChatCompletionRequest)
    assert principal is not None
    served = await request.app.state.serving_chat.create_chat_completion(
        body, principal, request_id=rid
    )
    prompt = [m.text for m in body.messages] if _gateway(request).debug_log_prompts else None
    return _respond(request, served, "/v1/chat/completions", prompt)


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    rid, principal = _begin(request)
    body = await _read(request, CompletionRequest)
    assert principal is not None
    served = await request.app.state.serving_completion.create_completion(
        body, principal, request_id=rid
    )
    prompt = body.prompt if _gateway(request).debug_log_prompts else None
    return _respond(request, served, "/v1/completions", prompt)


@router.post("/v1/classify")
async def create_classification(request: Request) -> Response:
    rid, principal = _begin(request)
    body = await _read(request, ClassifyRequest)
    assert principal is not None
    served = await request.app.state.serving_classify.create_classification(
        body, principal, request_id=rid
    )
    prompt = body.input if _gateway(request).debug_log_prompts else None
    return _respond(request, served, "/v1/classify", prompt)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    _begin(request)
    body = request.app.state.serving_models.list_models()
    return Response(body.model_dump_json(), media_type=_JSON)


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response:
    _begin(request)
    request.state.model = model
    body = request.app.state.serving_models.retrieve_model(model)
    return Response(body.model_dump_json(), media_type=_JSON)


@router.get("/health")
async def health(request: Request) -> Response:
    body = request.app.state.serving_models.health()
    return Response(body.model_dump_json(), media_type=_JSON)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    gw = _gateway(request)
    _begin(request, auth=gw.config.auth.protect_metrics)
    return Response(gw.metrics.render(), media_type=GatewayMetrics.content_type)


# --------------------------------------------------------------------------- errors


_CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"


def _client_gone(request: Request) -> Response:
    """A client that left before its request was read: logged as 499, not an error."""
    state = request.state
    rid = getattr(state, "request_id", None)
    if rid is not None:
        _gateway(request).log_request(
            request_id=rid,
            endpoint=request.url.path,
            status=_CLIENT_CLOSED,
            seconds=time.perf_counter() - state.t0,
            principal=getattr(state, "principal", None),
            model=getattr(state, "model", None),
            error="client_closed_request",
        )
    return Response(status_code=_CLIENT_CLOSED)  # nobody reads it; the metrics count it


async def _error_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):
        return _client_gone(request)
    status, body, headers = error_response(exc)
    if status >= 500 and not isinstance(exc, TieredError | HTTPException):
        # a bug: the traceback goes to the log (never the request body)
        logger.error("unhandled error in the gateway", exc_info=exc)
    state = request.state
    rid = getattr(state, "request_id", None)
    if rid is not None:
        headers["x-tiered-request-id"] = rid
        _gateway(request).log_request(
            request_id=rid,
            endpoint=request.url.path,
            status=status,
            seconds=time.perf_counter() - state.t0,
            principal=getattr(state, "principal", None),
            model=getattr(state, "model", None),
            error=body.error.code or body.error.type,
        )
    return Response(body.model_dump_json(), status_code=status, media_type=_JSON, headers=headers)


# the exception types build_app hands to _error_handler through Starlette's
# ExceptionMiddleware; any other exception goes on to the 500 handler outside
_HANDLED = (TieredError, ValidationError, RequestValidationError, HTTPException, ClientDisconnect)


class _HotRoutes:
    """Pure ASGI middleware: ``POST`` to the completion endpoints, straight to their route
    functions; everything else on to FastAPI's router.

    The innermost of the app's middleware, so whatever wraps the routes (request metrics,
    tracing, middleware a user adds, the 500 handler) wraps these too; the exceptions
    build_app maps get :func:`_error_handler` as Starlette's ``ExceptionMiddleware`` gives
    them. What it skips (routing, FastAPI's per-route layers) was a quarter of the
    gateway's CPU per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # the router's POST routes (the completion endpoints), from one place
        self.routes = {
            r.path: r.endpoint
            for r in router.routes
            if isinstance(r, APIRoute) and r.methods == {"POST"}
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self.routes.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await route(request)
        except _HANDLED as exc:
            response = await _error_handler(request, exc)
        try:
            await response(scope, receive, send)
        except _HANDLED as exc:  # as ExceptionMiddleware says it
            raise RuntimeError("Caught handled exception, but response already started.") from exc


class _RequestMetrics:
    """Pure ASGI middleware: requests by endpoint and status, time to the last byte."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - t0)


# --------------------------------------------------------------------------- app


def build_app(gateway: Gateway, *, close_on_shutdown: bool = True) -> FastAPI:
    """The gateway's ASGI app; it closes ``gateway`` on shutdown unless told not to."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            gateway.close()

    app = FastAPI(
        title="tiered gateway",
        summary="OpenAI-compatible endpoint that answers with the cheapest adequate model",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # the gateway's spans are its own (server.tracing); FastAPI's automatic ones would
        # repeat them, and asking whether they are on costs time on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.gateway = gateway
    app.state.serving_chat = OpenAIServingChat(gateway)
    app.state.serving_completion = OpenAIServingCompletion(gateway)
    app.state.serving_classify = OpenAIServingClassify(gateway)
    app.state.serving_models = OpenAIServingModels(gateway)
    app.include_router(router)
    for exc_type in (*_HANDLED, Exception):
        app.add_exception_handler(exc_type, _error_handler)
    app.add_middleware(_HotRoutes)  # first added: the innermost
    if gateway.tracer is not None:  # only then: no cost for a gateway without tracing
        from tiered.serve.tracing import TracingMiddleware

        app.add_middleware(TracingMiddleware, tracer=gateway.tracer)
    app.add_middleware(_RequestMetrics, metrics=gateway.metrics)
    return app


class _CoalescingTransport:
    """A connection's transport whose writes within one event-loop turn go out as one.

    uvicorn writes a response's status line and headers, then its body: two system calls
    (two packets) for every answer, where one does. Writes are held until the end of the
    loop turn they were made in (or until the transport closes), then sent together.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        # held past the call: a buffer the caller may reuse is copied now
        self._held.append(data if type(data) is bytes else bytes(data))

    def flush(self) -> None:
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol] | None:
    """uvicorn's HTTP protocol, closing a connection whose request headers take too long.

    uvicorn bounds the idle time between requests (keep-alive) but not a connection that
    sends its headers slowly or never (slowloris). The timer starts with the connection
    and with each new request, and stops once the headers are in; the body then has
    ``body_timeout_s`` (see :func:`_read`). None when httptools is not installed.

    Its writes go through a :class:`_CoalescingTransport`: a response's head and body
    leave in one system call.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # h11 only: uvicorn's own behaviour
        return None

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            coalescing = _CoalescingTransport(transport, self.loop)
            super().connection_made(coalescing)  # type: ignore[arg-type]
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def run_server(
    gateway: Gateway, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info"
) -> None:
    """Serve ``gateway`` with uvicorn until interrupted (one process; replicas share state
    through ``server.shared``)."""
    import uvicorn

    app = build_app(gateway)
    protocol = header_timeout_protocol(gateway.server.header_timeout_s)
    # uvicorn's access log adds nothing to our per-request line (and costs time)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=protocol or "auto",  # type: ignore[arg-type]
    )


__all__ = ["build_app", "header_timeout_protocol", "router", "run_server"]
