"""How LLM stages reach a server: a transport with one method, and one error mapping.

    class Transport:
        async def send(self, request: HttpRequest) -> HttpResponse

:class:`AiohttpTransport` posts over keep-alive connections (one pool per event loop);
:class:`MockTransport` answers from a function, in memory, for unit tests (httpx's
``MockTransport`` habit)::

    def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse.from_json({"choices": [...]})

    model = OpenAIChat(model="m", labels=[...], api_key_env=None,
                       transport=MockTransport(handler))

A transport returns every response, whatever its status (:func:`map_http_status` turns an
error status into a tiered error); a failure without a response raises an
:class:`~tiered.errors.UpstreamError` ``from`` the original exception. Every aiohttp
exception class has an entry in one table (a test walks aiohttp's hierarchy and fails on
any class left out): timeouts are :class:`~tiered.errors.UpstreamTimeoutError`, the rest
:class:`~tiered.errors.UpstreamError`, retryable unless retrying cannot help (TLS,
invalid URL, redirect loops). A response body is read in chunks up to
``max_response_bytes``; a bigger one is refused without holding it in memory.

Why aiohttp and not the official SDK: every call through ``openai.AsyncOpenAI`` costs
~0.8 ms of CPU in its request/response machinery; aiohttp posts the same JSON in ~0.2 ms,
which is most of the gateway's added latency. What the SDK gave us, we keep: bearer
auth, timeouts, proxy settings from the environment, errors by HTTP status with the
upstream's own message.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import email.utils
import functools
import inspect
import json
import math
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiered.errors import RateLimitError, UpstreamError, UpstreamTimeoutError

_MAX_MESSAGE = 500
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 16


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: method, path below the transport's base URL, body bytes."""

    method: str
    path: str
    body: bytes = b""

    @classmethod
    def post_json(cls, path: str, data: Any) -> HttpRequest:
        return cls("POST", path, json.dumps(data, separators=(",", ":")).encode())

    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


@dataclass(slots=True)
class HttpResponse:
    """A response: status, body bytes, headers (names in lower case)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(
        cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        return cls(
            status, json.dumps(data).encode(), {k.lower(): v for k, v in (headers or {}).items()}
        )

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")


# --------------------------------------------------------------------------- transports


class Transport(abc.ABC):
    """Sends requests to one server. See the module docstring."""

    @abc.abstractmethod
    async def send(self, request: HttpRequest) -> HttpResponse:
        """The server's response to ``request``, whatever its status.

        A failure without a response raises :class:`UpstreamError` from the original.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional: most transports hold nothing
        """Close what the transport holds on the running loop."""


Handler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]


class MockTransport(Transport):
    """Answers every request with ``handler(request)`` (sync or async), in memory.

    The handler may raise an :class:`UpstreamError` to play a failure without a
    response. Requests are kept in ``requests``.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        reply = self.handler(request)
        if inspect.isawaitable(reply):
            reply = await reply
        return reply


@dataclass
class _Pool:
    session: Any  # aiohttp.ClientSession, bound to one loop
    closer: AsyncGenerator[None, None]


async def _closer(session: Any) -> AsyncGenerator[None, None]:
    """Closes ``session`` when its loop shuts down its async generators.

    ``asyncio.run`` (and any loop owner calling ``loop.shutdown_asyncgens()``) finalises
    this generator before closing the loop, so no connection is left open whether or not
    anyone calls :meth:`AiohttpTransport.aclose`.
    """
    try:
        yield
    finally:
        await session.close()


class AiohttpTransport(Transport):
    """Keep-alive HTTP to one base URL through aiohttp; a connection pool per event loop."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 8,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        user_agent: str = "tiered",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._headers = {"content-type": "application/json", "user-agent": user_agent}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._secrets = (api_key,) if api_key and len(api_key) >= 4 else ()
        # looked up once: aiohttp's trust_env would look up netrc and proxies in a thread
        # on every request (~0.6 ms)
        self._proxy = proxy_for(self.base_url)
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"AiohttpTransport(base_url={self.base_url!r})"

    async def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            import aiohttp

            session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
            )
            closer = _closer(session)
            await anext(closer)  # started: the loop now finalises it at shutdown
            pool = self._pools[loop] = _Pool(session, closer)
        return pool

    async def send(self, request: HttpRequest) -> HttpResponse:
        pool = await self._pool()
        limit = self.max_response_bytes
        try:
            async with pool.session.request(
                request.method, self.base_url + request.path, data=request.body, proxy=self._proxy
            ) as resp:
                declared = resp.content_length
                if declared is not None and declared > limit:
                    resp.close()
                    raise _too_large(limit, resp.status)
                body = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > limit:
                        resp.close()  # drop the connection: the rest is never read
                        raise _too_large(limit, resp.status)
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return HttpResponse(resp.status, bytes(body), headers)
        except UpstreamError:
            raise
        except _mapped_classes() as exc:
            raise map_transport_error(exc, secrets=self._secrets) from exc

    async def aclose(self) -> None:
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.closer.aclose()


def _too_large(limit: int, status: int) -> UpstreamError:
    return UpstreamError(
        f"response larger than the limit of {limit:,} bytes (max_response_bytes)",
        status=status,
        retryable=False,
    )


# --------------------------------------------------------------------------- errors


def _mask(message: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            message = message.replace(s, "***")
    return message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "…"


def redact(text: str, secrets: Sequence[str] = (), limit: int = 200) -> str:
    """``text`` with secrets masked, cut to ``limit`` characters (for debug logs)."""
    return _mask(text, secrets)[:limit]


def retryable_status(status: int) -> bool:
    """Statuses worth another attempt: timeouts, conflicts, rate limits, server errors."""
    return status in (408, 409, 429) or status >= 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def upstream_message(body: bytes) -> str:
    """The upstream's own error text: OpenAI's ``{"error": {"message": ...}}`` or the body."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body[: _MAX_MESSAGE * 4].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(data.get("message"), str):
            return data["message"]
    return body[: _MAX_MESSAGE * 4].decode("utf-8", "replace").strip()


def map_http_status(
    status: int,
    body: bytes,
    *,
    where: str = "",
    secrets: Sequence[str] = (),
    retry_after: str | None = None,
) -> UpstreamError:
    """The tiered error for an HTTP error response (429 → :class:`RateLimitError`, ...)."""
    cls = RateLimitError if status == 429 else UpstreamError
    text = upstream_message(body) or "(no message)"
    message = f"HTTP {status}: {text}"
    return cls(
        _mask(f"{where}: {message}" if where else message, secrets),
        status=status,
        retryable=retryable_status(status),
        retry_after_s=parse_retry_after(retry_after),
    )


@dataclass(frozen=True, slots=True)
class _Kind:
    error: type[UpstreamError]
    what: str
    retryable: bool = True


_TIMEOUT = _Kind(UpstreamTimeoutError, "timed out")
_CONNECT = _Kind(UpstreamError, "connection error")
_CONNECTION = _Kind(UpstreamError, "connection error")
_TLS = _Kind(UpstreamError, "TLS error", retryable=False)
_BODY = _Kind(UpstreamError, "malformed or cut-short response")
_TOO_BIG = _Kind(UpstreamError, "response over its size limit", retryable=False)
_STATUS = _Kind(UpstreamError, "HTTP error")
_REDIRECTS = _Kind(UpstreamError, "too many redirects", retryable=False)
_URL = _Kind(UpstreamError, "invalid URL", retryable=False)
_REQUEST = _Kind(UpstreamError, "cannot send the request", retryable=False)

# aiohttp's exception classes by name, each with its kind; the test suite fails when an
# aiohttp release adds one that is not listed here
_AIOHTTP_KINDS: dict[str, _Kind] = {
    # client_exceptions
    "ClientError": _CONNECTION,
    "ClientConnectionError": _CONNECTION,
    "ClientConnectionResetError": _CONNECTION,
    "ClientOSError": _CONNECTION,
    "ServerConnectionError": _CONNECTION,
    "ServerDisconnectedError": _CONNECTION,
    "UploadAbortedError": _CONNECTION,
    "ClientConnectorError": _CONNECT,
    "ClientConnectorDNSError": _CONNECT,
    "ClientProxyConnectionError": _CONNECT,
    "UnixClientConnectorError": _CONNECT,
    "ClientSSLError": _TLS,
    "ClientConnectorSSLError": _TLS,
    "ClientConnectorCertificateError": _TLS,
    "ServerFingerprintMismatch": _TLS,
    "ServerTimeoutError": _TIMEOUT,
    "ConnectionTimeoutError": _TIMEOUT,
    "SocketTimeoutError": _TIMEOUT,
    "ClientPayloadError": _BODY,
    "ClientResponseError": _STATUS,
    "ContentTypeError": _STATUS,
    "WSServerHandshakeError": _STATUS,
    "ClientHttpProxyError": _STATUS,
    "TooManyRedirects": _REDIRECTS,
    "InvalidURL": _URL,
    "InvalidUrlClientError": _URL,
    "InvalidUrlRedirectClientError": _URL,
    "RedirectClientError": _URL,
    "NonHttpUrlClientError": _URL,
    "NonHttpUrlRedirectClientError": _URL,
    "WSMessageTypeError": _BODY,
    # http_exceptions: the response could not be parsed
    "HttpProcessingError": _BODY,
    "BadHttpMessage": _BODY,
    "HttpBadRequest": _BODY,
    "PayloadEncodingError": _BODY,
    "ContentEncodingError": _BODY,
    "TransferEncodingError": _BODY,
    "ContentLengthError": _BODY,
    "DecompressSizeError": _TOO_BIG,
    "LineTooLong": _BODY,
    "InvalidHeader": _BODY,
    "BadStatusLine": _BODY,
    "BadHttpMethod": _BODY,
    "InvalidURLError": _BODY,
    # streams, payloads, websockets, multipart
    "EofStream": _BODY,
    "LookupError": _REQUEST,  # aiohttp.payload's: no way to send the given data
    "WebSocketError": _BODY,
    "BadContentDispositionHeader": _BODY,
    "BadContentDispositionParam": _BODY,
}
# failures outside aiohttp's own classes that a request can end in
_BUILTIN_KINDS: dict[type[BaseException], _Kind] = {
    TimeoutError: _TIMEOUT,
    OSError: _CONNECTION,
}


def aiohttp_exception_classes() -> list[type[BaseException]]:
    """Every exception class aiohttp defines (public modules and their subclasses)."""
    import aiohttp
    import aiohttp.client_exceptions
    import aiohttp.http_exceptions
    import aiohttp.multipart
    import aiohttp.streams

    found: set[type[BaseException]] = set()
    modules = [aiohttp, aiohttp.client_exceptions, aiohttp.http_exceptions]
    modules += [aiohttp.streams, aiohttp.multipart]
    todo = [
        v
        for mod in modules
        for v in vars(mod).values()
        if isinstance(v, type) and issubclass(v, BaseException)
    ]
    while todo:
        cls = todo.pop()
        if cls in found or not cls.__module__.startswith("aiohttp"):
            continue
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


@functools.cache
def _kind_table() -> dict[type[BaseException], _Kind]:
    classes = aiohttp_exception_classes()
    table = {c: _AIOHTTP_KINDS[c.__name__] for c in classes if c.__name__ in _AIOHTTP_KINDS}
    return {**table, **_BUILTIN_KINDS}


def _mapped_classes() -> tuple[type[BaseException], ...]:
    return tuple(_kind_table())


def map_transport_error(exc: BaseException, *, secrets: Sequence[str] = ()) -> UpstreamError:
    """The tiered error for a failure without a response (timeout, refused, reset, ...).

    Raise it ``from exc``. A class not in the table maps as a connection error.
    """
    import aiohttp

    table = _kind_table()
    kind = next((table[c] for c in type(exc).__mro__ if c in table), _CONNECTION)
    status = exc.status if isinstance(exc, aiohttp.ClientResponseError) else None
    retryable = retryable_status(status) if isinstance(status, int) and status else kind.retryable
    what = kind.what if kind is _TIMEOUT else f"{kind.what}: {type(exc).__name__}: {exc}"
    return kind.error(_mask(what, secrets), status=status or None, retryable=retryable)


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``, ...).

    Loopback hosts never go through a proxy: a local server is never behind one.
    """
    import ipaddress
    import urllib.request
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host is None or host == "localhost" or urllib.request.proxy_bypass(host):
        return None
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return None
    return urllib.request.getproxies().get(urlsplit(url).scheme)


__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "AiohttpTransport",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "MockTransport",
    "Transport",
    "aiohttp_exception_classes",
    "map_http_status",
    "map_transport_error",
    "parse_retry_after",
    "proxy_for",
    "redact",
    "retryable_status",
    "upstream_message",
]
