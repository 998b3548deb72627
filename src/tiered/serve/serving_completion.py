"""``POST /v1/completions``: one prompt, or a batch of prompts run as one cascade batch."""

from __future__ import annotations

from tiered.core.items import Item
from tiered.serve.auth import Principal
from tiered.serve.errors import InvalidRequestError
from tiered.serve.gateway import Execution
from tiered.serve.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamChoice,
    UsageInfo,
)
from tiered.serve.serving_base import OpenAIServing, ServedResponse, now, split_text, sse


class OpenAIServingCompletion(OpenAIServing):
    def validate(self, request: CompletionRequest) -> list[str]:
        """The prompts, after refusing what the gateway cannot honour."""
        if request.n not in (None, 1):
            raise InvalidRequestError("only n=1 is supported", param="n")
        if request.best_of not in (None, 1):
            raise InvalidRequestError("only best_of=1 is supported", param="best_of")
        if request.logprobs is not None:
            raise InvalidRequestError("logprobs are not returned by the gateway", param="logprobs")
        if request.suffix:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        if not prompts:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        self.check_batch(len(prompts), "prompt")
        for i, p in enumerate(prompts):
            self.check_text(p, "prompt" if isinstance(request.prompt, str) else f"prompt.{i}")
        return prompts

    async def create_completion(
        self, request: CompletionRequest, principal: Principal, *, request_id: str
    ) -> ServedResponse:
        served = self.gateway.cascade(request.model)
        prompts = self.validate(request)
        params = request.params()
        items = [
            Item(id=f"{request_id}-{i}", input=p, params=params) for i, p in enumerate(prompts)
        ]
        run = self.gateway.execute(
            served, items, principal, request_id=request_id, max_tokens=params.get("max_tokens")
        )
        created = now()
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)

            def chunks(execution: Execution) -> list[bytes]:
                return self._chunks(execution, request, prompts, created, include_usage)

            return await self.streamed(run, chunks, request_id=request_id)
        execution = await run
        texts = self._texts(execution, request, prompts)
        body = CompletionResponse(
            id=f"cmpl-{request_id}",
            created=created,
            model=request.model,
            choices=[CompletionChoice(index=i, text=t) for i, t in enumerate(texts)],
            usage=self._usage(execution),
            tiered=[self.trace(execution, o) for o in execution.outcomes],
        )
        return ServedResponse(body=body, headers=self.headers(execution), execution=execution)

    def _texts(
        self, execution: Execution, request: CompletionRequest, prompts: list[str]
    ) -> list[str]:
        texts = self.require_answers(execution)
        if request.echo:
            texts = [p + t for p, t in zip(prompts, texts, strict=True)]
        return texts

    @staticmethod
    def _usage(execution: Execution) -> UsageInfo:
        p = sum(o.tokens_in for o in execution.outcomes)
        c = sum(o.tokens_out for o in execution.outcomes)
        return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    def _chunks(
        self,
        execution: Execution,
        request: CompletionRequest,
        prompts: list[str],
        created: int,
        include_usage: bool,
    ) -> list[bytes]:
        texts = self._texts(execution, request, prompts)
        cid = f"cmpl-{execution.request_id}"

        def chunk(index: int, text: str, finish: bool = False) -> bytes:
            choice = CompletionStreamChoice(
                index=index, text=text, finish_reason="stop" if finish else None
            )
            # each prompt's finish chunk carries its trace (clients read choices[0] of
            # every chunk, so no chunk without choices unless usage was asked for)
            trace = [self.trace(execution, execution.outcomes[index])] if finish else None
            return sse(
                CompletionChunk(
                    id=cid, created=created, model=request.model, choices=[choice], tiered=trace
                )
            )

        out = []
        for i, text in enumerate(texts):
            out += [chunk(i, piece) for piece in split_text(text, self.server.stream_chunk_chars)]
            out.append(chunk(i, "", finish=True))
        if include_usage:
            out.append(
                sse(
                    CompletionChunk(
                        id=cid,
                        created=created,
                        model=request.model,
                        choices=[],
                        usage=self._usage(execution),
                    )
                )
            )
        return out


__all__ = ["OpenAIServingCompletion"]
