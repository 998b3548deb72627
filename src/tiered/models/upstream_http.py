"""The HTTP client of OpenAI-compatible stages: JSON over aiohttp, one error mapping.

Why not the official SDK: every call through ``openai.AsyncOpenAI`` costs ~0.8 ms of CPU in
its request/response machinery (measured against a loopback upstream, see
``benchmarks/gateway.py``); aiohttp's C-accelerated client posts the same JSON in ~0.2 ms,
which is most of the gateway's added latency. What the SDK gave us, we keep: bearer auth,
timeouts, proxy settings from the environment, and errors by HTTP status with the upstream's
own message (:func:`map_http_status`, :func:`map_transport_error`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tiered.errors import RateLimitError, UpstreamError, UpstreamTimeoutError

_MAX_MESSAGE = 500


def _mask(message: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            message = message.replace(s, "***")
    return message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "…"


def retryable_status(status: int) -> bool:
    """Statuses worth another attempt: timeouts, conflicts, rate limits, server errors."""
    return status in (408, 409, 429) or status >= 500


def _upstream_message(body: bytes) -> str:
    """The upstream's own error text: OpenAI's ``{"error": {"message": ...}}`` or the body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(data.get("message"), str):
            return data["message"]
    return body.decode("utf-8", "replace").strip()


def map_http_status(
    status: int, body: bytes, *, where: str = "", secrets: Sequence[str] = ()
) -> UpstreamError:
    """The tiered error for an HTTP error response (429 → :class:`RateLimitError`, ...)."""
    cls = RateLimitError if status == 429 else UpstreamError
    text = _upstream_message(body) or "(no message)"
    message = f"HTTP {status}: {text}"
    return cls(
        _mask(f"{where}: {message}" if where else message, secrets),
        status=status,
        retryable=retryable_status(status),
    )


def map_transport_error(
    exc: BaseException, *, where: str = "", secrets: Sequence[str] = ()
) -> UpstreamError:
    """The tiered error for a failure without a response: timeout, refused, reset, bad JSON."""
    import aiohttp

    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        cls: type[UpstreamError] = UpstreamTimeoutError
        what = "timed out"
    elif isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        cls, what = UpstreamError, f"malformed response: {exc}"
    elif isinstance(exc, aiohttp.ClientError | OSError):
        cls, what = UpstreamError, f"connection error: {type(exc).__name__}: {exc}"
    else:
        cls, what = UpstreamError, f"{type(exc).__name__}: {exc}"
    return cls(_mask(f"{where}: {what}" if where else what, secrets), retryable=True)


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


@dataclass(slots=True)
class HttpReply:
    status: int
    body: bytes
    retry_after: str | None


class UpstreamClient:
    """Keep-alive JSON posts to one base URL from one event loop (aiohttp's pool is per loop)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        max_connections: int,
        user_agent: str = "tiered",
    ) -> None:
        import aiohttp

        self.base_url = base_url.rstrip("/")
        headers = {"content-type": "application/json", "user-agent": user_agent}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=max_connections),
            # not trust_env: aiohttp would then look up netrc and proxies in a thread on
            # every request (~0.6 ms); the proxy is looked up once, here
        )
        self._proxy = proxy_for(self.base_url)

    async def post_json(
        self, path: str, body: Mapping[str, Any], *, where: str = "", secrets: Sequence[str] = ()
    ) -> HttpReply:
        """POST ``body`` as JSON and read the reply, whatever its status.

        Failures without a reply raise :func:`map_transport_error`'s error (retryable);
        mapping an error *status* is the caller's (:func:`map_http_status`).
        """
        import aiohttp

        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._session.post(
                self.base_url + path, data=data, proxy=self._proxy
            ) as resp:
                payload = await resp.read()
                return HttpReply(resp.status, payload, resp.headers.get("retry-after"))
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise map_transport_error(exc, where=where, secrets=secrets) from exc

    async def close(self) -> None:
        await self._session.close()


__all__ = [
    "HttpReply",
    "UpstreamClient",
    "map_http_status",
    "map_transport_error",
    "retryable_status",
]
