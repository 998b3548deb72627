"""``POST /v1/chat/completions``: a chat request through a cascade.

The request's messages become one item (``Item.input`` is the list of ``{role,
content}`` messages, with ``tool_calls``/``tool_call_id`` where the client sent them; the
generation parameters the client set, and its ``tools``, are in ``Item.params``); the
answering stage's text is the assistant message, and its tool calls the message's
``tool_calls``. A classify cascade answers with its label.
"""

from __future__ import annotations

from typing import Literal

from tiered.core.items import Item
from tiered.serve.auth import Principal
from tiered.serve.engine import ServedCascade
from tiered.serve.errors import InvalidRequestError, PayloadTooLargeError
from tiered.serve.gateway import Execution
from tiered.serve.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    TieredTrace,
    ToolCall,
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

    def answer(self, execution: Execution) -> tuple[str | None, list[ToolCall] | None]:
        """The assistant message's content and tool calls (None when it calls none)."""
        text = self.answer_text(execution)
        calls = execution.outcomes[0].tool_calls
        if not calls:
            return text, None
        # the label of a tool call is its key: the content is the stage's own text
        content = (execution.outcomes[0].raw_text or "").strip()
        return content or None, [ToolCall.model_validate(c) for c in calls]

    def validate(self, request: ChatCompletionRequest, served: ServedCascade) -> None:
        """Refuse what the gateway cannot honour, naming the parameter."""
        if request.n not in (None, 1):
            raise InvalidRequestError("only n=1 is supported", param="n")
        if request.functions or request.function_call is not None:
            raise InvalidRequestError(
                "legacy function calling is not supported; send 'tools' instead",
                param="functions",
            )
        self.validate_tools(request, served)
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

    @staticmethod
    def validate_tools(request: ChatCompletionRequest, served: ServedCascade) -> None:
        """Tools need a stage that takes them; ``tool_choice`` needs tools to choose from."""
        choice = request.tool_choice
        if not request.tools:
            if choice is not None and choice != "none":
                raise InvalidRequestError(
                    "'tool_choice' is only allowed when 'tools' are given", param="tool_choice"
                )
            return
        if served.tools is None:
            raise InvalidRequestError(
                f"model '{served.name}' has no stage configured for tool calls (a stage's "
                "model takes them with tools: true)",
                param="tools",
                code="tools_not_supported",
            )
        if choice is not None and not isinstance(choice, str):
            names = {t.function.name for t in request.tools}
            if choice.function.name not in names:
                raise InvalidRequestError(
                    f"tool_choice names function '{choice.function.name}', which is not "
                    "among the tools",
                    param="tool_choice",
                )

    async def create_chat_completion(
        self, request: ChatCompletionRequest, principal: Principal, *, request_id: str
    ) -> ServedResponse:
        served = self.gateway.cascade(request.model)
        self.validate(request, served)
        params = request.params()
        item = Item(
            id=request_id,
            input=[m.as_input() for m in request.messages],
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
        text, calls = self.answer(execution)
        message = ChatCompletionMessage(content=text, tool_calls=calls)
        choice = ChatCompletionChoice(
            index=0, message=message, finish_reason="tool_calls" if calls else "stop"
        )
        body = ChatCompletionResponse(
            id=f"chatcmpl-{request_id}",
            created=created,
            model=request.model,
            choices=[choice],
            usage=_usage(execution),
            tiered=self.trace(execution, execution.outcomes[0]),
        )
        return ServedResponse(body=body, headers=self.headers(execution), execution=execution)

    def _chunks(
        self, execution: Execution, model: str, created: int, include_usage: bool
    ) -> list[bytes]:
        """The answer as OpenAI chunks: role, text pieces, tool calls (each its id and name,
        then its arguments in pieces), finish (with the trace), usage."""
        text, calls = self.answer(execution)
        cid = f"chatcmpl-{execution.request_id}"
        finish: Literal["stop", "tool_calls"] = "tool_calls" if calls else "stop"
        size = self.server.stream_chunk_chars

        def chunk(delta: DeltaMessage, trace: TieredTrace | None = None) -> bytes:
            choice = ChatCompletionStreamChoice(
                index=0, delta=delta, finish_reason=finish if trace is not None else None
            )
            return sse(
                ChatCompletionStreamResponse(
                    id=cid, created=created, model=model, choices=[choice], tiered=trace
                )
            )

        out = [chunk(DeltaMessage(role="assistant", content=""))]
        out += [chunk(DeltaMessage(content=piece)) for piece in split_text(text or "", size)]
        for j, call in enumerate(calls or []):
            fn = call.function
            head = DeltaFunctionCall(name=fn.name, arguments="")
            out.append(
                chunk(
                    DeltaMessage(
                        tool_calls=[
                            DeltaToolCall(index=j, id=call.id, type="function", function=head)
                        ]
                    )
                )
            )
            out += [
                chunk(
                    DeltaMessage(
                        tool_calls=[
                            DeltaToolCall(index=j, function=DeltaFunctionCall(arguments=piece))
                        ]
                    )
                )
                for piece in split_text(fn.arguments, size)
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
