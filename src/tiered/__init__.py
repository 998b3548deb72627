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

__version__ = "0.1.0"

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
