"""OpenAI-compatible gateway: ``tiered serve`` runs cascades behind the standard API.

Layout (as vLLM's OpenAI entrypoints): :mod:`~tiered.serve.protocol` holds the wire
schemas, ``serving_*`` classes the logic of each endpoint, :mod:`~tiered.serve.api_server`
thin routers, and :func:`~tiered.serve.errors.error_response` the one mapping from
exceptions to OpenAI errors. :class:`~tiered.serve.gateway.Gateway` is the state they
share: cascades, keys, budgets, in-flight limit, metrics.
"""

from tiered.serve.api_server import build_app, run_server
from tiered.serve.config import GatewayConfig, load_gateway_config
from tiered.serve.errors import GatewayError, error_response
from tiered.serve.gateway import Gateway

__all__ = [
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "build_app",
    "error_response",
    "load_gateway_config",
    "run_server",
]
