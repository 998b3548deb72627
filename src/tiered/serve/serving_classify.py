"""``POST /v1/classify``: a batch of texts through a classify cascade, one cascade batch.

Each text gets its label, the stage that answered, that stage's confidence, the cost of
every stage that ran for it, and (for online cascades) whether the expert's answer was
used to teach the cheaper stages.
"""

from __future__ import annotations

from tiered.core.items import Item
from tiered.serve.auth import Principal
from tiered.serve.errors import InvalidRequestError
from tiered.serve.protocol import Classification, ClassifyRequest, ClassifyResponse, ClassifyUsage
from tiered.serve.serving_base import OpenAIServing, ServedResponse, now


class OpenAIServingClassify(OpenAIServing):
    def validate(self, request: ClassifyRequest) -> list[str]:
        texts = request.texts
        if not texts:
            raise InvalidRequestError("input must not be empty", param="input")
        self.check_batch(len(texts), "input")
        single = isinstance(request.input, str)
        for i, t in enumerate(texts):
            self.check_text(t, "input" if single else f"input.{i}")
        return texts

    async def create_classification(
        self, request: ClassifyRequest, principal: Principal, *, request_id: str
    ) -> ServedResponse:
        served = self.gateway.cascade(request.model, task="classify")
        texts = self.validate(request)
        items = [Item(id=f"{request_id}-{i}", input=t) for i, t in enumerate(texts)]
        execution = await self.gateway.execute(served, items, principal, request_id=request_id)
        data = [
            Classification(
                index=i,
                label=o.label,
                stage=o.stage,
                stage_index=o.stage_index,
                confidence=o.confidence,
                signals=o.signals,
                cost_usd=o.cost_usd,
                latency_ms=o.latency_ms,
                learned=o.learned,
                error=next((t.error for t in reversed(o.trace) if t.error), None),
            )
            for i, o in enumerate(execution.outcomes)
        ]
        body = ClassifyResponse(
            id=f"clf-{request_id}",
            created=now(),
            model=request.model,
            data=data,
            usage=ClassifyUsage(texts=len(texts), cost_usd=execution.cost_usd),
        )
        return ServedResponse(body=body, headers=self.headers(execution), execution=execution)


__all__ = ["OpenAIServingClassify"]
