"""``GET /v1/models`` and ``GET /health``."""

from __future__ import annotations

from tiered.serve.protocol import HealthResponse, ModelCard, ModelList
from tiered.serve.serving_base import OpenAIServing


class OpenAIServingModels(OpenAIServing):
    def list_models(self) -> ModelList:
        """Every served cascade, as a model (its task and stages in extra fields)."""
        return ModelList(
            data=[
                ModelCard(id=c.name, created=c.created, task=c.task, stages=c.stage_names)
                for c in self.gateway.cascades.values()
            ]
        )

    def retrieve_model(self, model: str) -> ModelCard:
        """One served cascade; 404 naming ``model`` when there is none."""
        c = self.gateway.cascade(model)
        return ModelCard(id=c.name, created=c.created, task=c.task, stages=c.stage_names)

    def health(self) -> HealthResponse:
        return HealthResponse(
            models=sorted(self.gateway.cascades),
            in_flight=self.gateway.limiter.count,
            max_in_flight=self.gateway.limiter.limit,
            local_servers={n: s.base_url for n, s in self.gateway.local_servers.items()},
        )


__all__ = ["OpenAIServingModels"]
