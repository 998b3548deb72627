"""What every serving class shares: size checks, the trace, headers, streaming helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from tiered.serve.engine import ItemOutcome
from tiered.serve.errors import NoAnswerError, PayloadTooLargeError, error_response
from tiered.serve.gateway import Execution, Gateway
from tiered.serve.protocol import TieredTrace

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


@dataclass(slots=True)
class ServedResponse:
    """A serving class's answer: a JSON body or an SSE byte stream, and headers."""

    body: BaseModel | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    execution: Execution | None = None
    # a stream that started before its cascade finished records the failure here
    error: BaseException | None = None


def sse(payload: BaseModel) -> bytes:
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"


def split_text(text: str, size: int) -> list[str]:
    """Pieces of about ``size`` characters, cut after whitespace where possible."""
    if len(text) <= size:
        return [text] if text else []
    out = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start, end)
            if cut > start:
                end = cut + 1
        out.append(text[start:end])
        start = end
    return out


class OpenAIServing:
    """Base of the serving classes: holds the gateway, builds traces and headers."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.server = gateway.server

    def check_text(self, text: str, param: str) -> None:
        limit = self.server.max_message_chars
        if len(text) > limit:
            raise PayloadTooLargeError(
                f"{param} has {len(text):,} characters; the limit is {limit:,}", param=param
            )

    def check_batch(self, n: int, param: str) -> None:
        limit = self.server.max_batch
        if n > limit:
            raise PayloadTooLargeError(
                f"{param} has {n:,} entries; the limit is {limit:,}", param=param
            )

    @staticmethod
    def trace(execution: Execution, outcome: ItemOutcome) -> TieredTrace:
        return TieredTrace(
            cascade=execution.cascade,
            stage=outcome.stage,
            stage_index=outcome.stage_index,
            confidence=outcome.confidence,
            cost_usd=outcome.cost_usd,
            latency_ms=outcome.latency_ms,
            trace=outcome.trace,
            request_id=execution.request_id,
        )

    @staticmethod
    def headers(execution: Execution) -> dict[str, str]:
        """``x-tiered-*`` headers: who answered, at what cost and upstream time."""
        outs = execution.outcomes
        h = {
            "x-tiered-request-id": execution.request_id,
            "x-tiered-cascade": execution.cascade,
            "x-tiered-stage": ",".join(o.stage for o in outs),
            "x-tiered-cost-usd": f"{execution.cost_usd:.10g}",
            "x-tiered-latency-ms": f"{max((o.latency_ms for o in outs), default=0.0):.3f}",
            "x-tiered-deferrals": str(sum(o.stage_index for o in outs)),
        }
        if len(outs) == 1 and outs[0].confidence is not None:
            h["x-tiered-confidence"] = f"{outs[0].confidence:.6g}"
        return h

    @staticmethod
    def require_answers(execution: Execution) -> list[str]:
        texts = []
        for o in execution.outcomes:
            if o.text is None:
                raise NoAnswerError(
                    f"stage '{o.stage}' of cascade '{execution.cascade}' (the last one to run) "
                    "gave no usable answer"
                )
            texts.append(o.text)
        return texts

    async def streamed(
        self,
        run: Awaitable[Execution],
        chunks: Callable[[Execution], list[bytes]],
        *,
        request_id: str,
    ) -> ServedResponse:
        """An SSE response for a cascade run.

        The cascade must finish before anything is streamed (only then is it known which
        stage answers), so we wait for it up to ``stream_keepalive_s``: when it finishes
        by then, a failure is an ordinary HTTP error and the ``x-tiered-*`` headers are
        set. A slower run starts the stream at once and sends SSE comments while it
        waits (so proxies do not drop the idle connection); a failure after that is sent
        as an OpenAI error event. Either way a started stream ends with ``[DONE]``.
        """
        task: asyncio.Task[Execution] = asyncio.ensure_future(run)
        # a result nobody reads (the client left) must not be logged as "never retrieved"
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await asyncio.wait({task}, timeout=self.server.stream_keepalive_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            execution = task.result()  # a failure raises: an HTTP error, nothing streamed yet
            return ServedResponse(
                stream=_replay(chunks(execution)),
                headers=self.headers(execution),
                execution=execution,
            )
        response = ServedResponse(headers={"x-tiered-request-id": request_id})
        response.stream = _late_stream(task, chunks, self.server.stream_keepalive_s, response)
        return response


async def _replay(body: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in body:
        yield chunk
    yield DONE


async def _late_stream(
    task: asyncio.Task[Execution],
    chunks: Callable[[Execution], list[bytes]],
    keepalive_s: float,
    sink: ServedResponse,
) -> AsyncIterator[bytes]:
    """Keep-alive comments until the run ends, then its chunks or an error; then [DONE]."""
    try:
        try:
            yield KEEPALIVE
            while not task.done():
                await asyncio.wait({task}, timeout=keepalive_s)
                if not task.done():
                    yield KEEPALIVE
            sink.execution = task.result()
            body = chunks(sink.execution)
        except Exception as exc:
            sink.error = exc
            yield sse(error_response(exc)[1])
        else:
            for chunk in body:
                yield chunk
        yield DONE
    finally:
        # the client went away: stop the cascade (its slot and reservation are released)
        if not task.done():
            task.cancel()


def now() -> int:
    return int(time.time())


__all__ = ["DONE", "KEEPALIVE", "OpenAIServing", "ServedResponse", "now", "split_text", "sse"]
