"""LLM stages and their toolbox: labels, pricing and the one budget, transports.

- :mod:`~tiered.models.llm.labels`: label sets and the registry of answer normalisers;
- :mod:`~tiered.models.llm.pricing`: prices, worst cases (:class:`PricedModel`) and the
  :class:`Budget` used by stages and the gateway alike;
- :mod:`~tiered.models.llm.transport`: the one-method :class:`Transport`, aiohttp and
  in-memory (:class:`MockTransport`) implementations, the one error mapping;
- :mod:`~tiered.models.llm.responses`: reading responses into answers and signals;
- :mod:`~tiered.models.llm.prompts` and :mod:`~tiered.models.llm.openai_chat`: any
  OpenAI-compatible endpoint as a stage (kind ``openai``);
- :mod:`~tiered.models.llm.llamacpp`: a local GGUF model in-process (kind ``llamacpp``);
  :mod:`~tiered.models.llm.llama_server`: ``llama_cpp.server`` on loopback.

Importing this package registers the kinds ``openai`` and ``llamacpp``.
"""

from tiered.models.llm.labels import (
    LabelSet,
    Normalizer,
    normalize_casefold,
    normalize_choice,
    normalize_exact,
    normalize_number,
    register_normalizer,
    resolve_normalizer,
)
from tiered.models.llm.llama_server import LlamaServer, default_gguf, free_port
from tiered.models.llm.llamacpp import Demo, LlamaCpp, LlamaCppSpec, build_llamacpp
from tiered.models.llm.openai_chat import OpenAIChat, build_openai_chat, caller_scope
from tiered.models.llm.pricing import Budget, PricedModel, Prices, Reservation, SpendLog
from tiered.models.llm.prompts import OpenAIChatSpec
from tiered.models.llm.responses import (
    Choice,
    MalformedResponseError,
    label_distribution,
    parse_response,
)
from tiered.models.llm.transport import (
    AiohttpTransport,
    HttpRequest,
    HttpResponse,
    MockTransport,
    Transport,
)

__all__ = [
    "AiohttpTransport",
    "Budget",
    "Choice",
    "Demo",
    "HttpRequest",
    "HttpResponse",
    "LabelSet",
    "LlamaCpp",
    "LlamaCppSpec",
    "LlamaServer",
    "MalformedResponseError",
    "MockTransport",
    "Normalizer",
    "OpenAIChat",
    "OpenAIChatSpec",
    "PricedModel",
    "Prices",
    "Reservation",
    "SpendLog",
    "Transport",
    "build_llamacpp",
    "build_openai_chat",
    "caller_scope",
    "default_gguf",
    "free_port",
    "label_distribution",
    "normalize_casefold",
    "normalize_choice",
    "normalize_exact",
    "normalize_number",
    "parse_response",
    "register_normalizer",
    "resolve_normalizer",
]
