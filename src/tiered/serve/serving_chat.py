"""``POST /v1/chat/completions``: a chat request through a cascade.

The request's messages become one item (``Item.input`` is the list of ``{role,
content}`` messages; the generation parameters the client set are in ``Item.params``);
the answering stage's text is the assistant message. A classify cascade answers with
its label.
"""

from __future__ import annotations

from tiered.core.items import Item
from tiered.serve.auth import Principal
from tiered.serve.errors import InvalidRequestError, PayloadTooLargeError
from tiered.serve.gateway import Execution
from tiered.serve.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    TieredTrace,
    UsageInfo,
)
from tiered.serve.serving_base import OpenAIServing, ServedResponse, now, split_text, sse


def _usage(execution: Execution) -> UsageInfo:
    # tokens of the answering stage: the ones the returned text came from
    p = sum(o.tokens_in for o in execution.outcomes)
    c = sum(o.tokens_out for o in execution.outcomes)
    return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


class OpenAIServingChat(OpenAIServing):
    def answer_text(self, execution: Execution) -> str:
        # base models behind a completions endpoint start answers with " " or "\n\n";
        # an assistant message does not (completions keep the text exactly)
        return self.require_answers(execution)[0].strip()

    def validate(self, request: ChatCompletionRequest) -> None:
        """Refuse what the gateway cannot honour, naming the parameter."""
        if request.n not in (None, 1):
            raise InvalidRequestError("only n=1 is supported", param="n")
        if request.tools or request.functions:
            raise InvalidRequestError(
                "tool and function calling is not supported by the gateway", param="tools"
            )
        if request.logprobs:
            raise InvalidRequestError("logprobs are not returned by the gateway", param="logprobs")
        fmt = (request.response_format or {}).get("type", "text")
        if fmt != "text":
            raise InvalidRequestError(
                f"response_format type '{fmt}' is not supported; only 'text'",
                param="response_format",
            )
        if len(request.messages) > self.server.max_messages:
            raise PayloadTooLargeError(
                f"{len(request.messages):,} messages; the limit is {self.server.max_messages:,}",
                param="messages",
            )
        for i, m in enumerate(request.messages):
            self.check_text(m.text, f"messages.{i}.content")

    async def create_chat_completion(
        self, request: ChatCompletionRequest, principal: Principal, *, request_id: str
    ) -> ServedResponse:
        served = self.gateway.cascade(request.model)
        self.validate(request)
        params = request.params()
        item = Item(
            id=request_id,
            input=[{"role": m.role, "content": m.text} for m in request.messages],
            params=params,
        )
        run = self.gateway.execute(
            served, [item], principal, request_id=request_id, max_tokens=params.get("max_tokens")
        )
        created = now()
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)

            def chunks(execution: Execution) -> list[bytes]:
                return self._chunks(execution, request.model, created, include_usage)

            return await self.streamed(run, chunks, request_id=request_id)
        execution = await run
        text = self.answer_text(execution)
        body = ChatCompletionResponse(
            id=f"chatcmpl-{request_id}",
            created=created,
            model=request.model,
            choices=[ChatCompletionChoice(index=0, message=ChatCompletionMessage(content=text))],
            usage=_usage(execution),
            tiered=self.trace(execution, execution.outcomes[0]),
        )
        return ServedResponse(body=body, headers=self.headers(execution), execution=execution)

    def _chunks(
        self, execution: Execution, model: str, created: int, include_usage: bool
    ) -> list[bytes]:
        """The answer as OpenAI chunks: role, text pieces, finish (with the trace), usage."""
        text = self.answer_text(execution)
        cid = f"chatcmpl-{execution.request_id}"

        def chunk(delta: DeltaMessage, trace: TieredTrace | None = None) -> bytes:
            choice = ChatCompletionStreamChoice(
                index=0, delta=delta, finish_reason="stop" if trace is not None else None
            )
            return sse(
                ChatCompletionStreamResponse(
                    id=cid, created=created, model=model, choices=[choice], tiered=trace
                )
            )

        out = [chunk(DeltaMessage(role="assistant", content=""))]
        out += [
            chunk(DeltaMessage(content=piece))
            for piece in split_text(text, self.server.stream_chunk_chars)
        ]
        # the finish chunk carries the trace
        out.append(chunk(DeltaMessage(), self.trace(execution, execution.outcomes[0])))
        if include_usage:
            out.append(
                sse(
                    ChatCompletionStreamResponse(
                        id=cid, created=created, model=model, choices=[], usage=_usage(execution)
                    )
                )
            )
        return out


__all__ = ["OpenAIServingChat"]
