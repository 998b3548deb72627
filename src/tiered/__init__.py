"""tiered: answer each request with the cheapest model that can answer it well."""

from tiered.core import (
    AnswerBatch,
    Cascade,
    CascadeResult,
    CascadeSpec,
    Decision,
    Item,
    Stage,
    load_cascade,
)
from tiered.errors import ConfigError, DataError, TieredError
from tiered.plugins import register_builtins as _register_builtins
from tiered.version import __version__

# the composition root: declare tiered's own model and rule kinds (nothing is imported yet)
_register_builtins()


__all__ = [
    "AnswerBatch",
    "Cascade",
    "CascadeResult",
    "CascadeSpec",
    "ConfigError",
    "DataError",
    "Decision",
    "Item",
    "Stage",
    "TieredError",
    "__version__",
    "load_cascade",
]
