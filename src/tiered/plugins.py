"""The composition root: which module provides each of tiered's model and rule kinds.

Core looks kinds up in its registries (:data:`tiered.core.spec.MODELS`,
:data:`tiered.core.rules.RULES`) and imports nothing above itself; this module tells the
registries where tiered's own kinds live. Nothing is imported here: a kind's module is
imported the first time a cascade uses the kind, so ``import tiered`` and ``tiered --help``
stay fast, and a cascade of replay models never imports torch or scikit-learn.

``import tiered`` runs :func:`register_builtins`, so ``CascadeSpec.build()`` finds these
kinds without any setup call. Rule kinds defined in :mod:`tiered.core.rules` (threshold,
window, vote, agreement, all_of, any_of, not, always, never) register themselves.

Another package adds kinds without editing tiered, through entry points::

    [project.entry-points."tiered.models"]
    my_model = "my_package.models:build_my_model"   # factory (spec, ctx) -> Model
    [project.entry-points."tiered.rules"]
    my_rule = "my_package.rules:MyRule"              # a DeferralRule subclass, kind "my_rule"
"""

from __future__ import annotations

from tiered.core.rules import RULES
from tiered.core.spec import MODELS

# model kind -> "module:factory" (the module also registers it with ``@register_model``)
BUILTIN_MODELS: dict[str, str] = {
    "embedding": "tiered.models.embedding:build_embedding",
    "minilm": "tiered.models.embedding:build_embedding",
    "hashed_ngram": "tiered.models.hashed_ngram:build_hashed_ngram",
    "hashed_static": "tiered.models.hashed_static:build_hashed_static",
    "label_column": "tiered.models.label_column:build_label_column",
    "llamacpp": "tiered.models.llm.llamacpp:build_llamacpp",
    "openai": "tiered.models.llm.openai_chat:build_openai_chat",
    "replay": "tiered.replay.model:build_replay",
    "static_embedding": "tiered.models.static_embedding:build_static_embedding",
}

# rule kind -> "module:class" (defining the class also registers it)
BUILTIN_RULES: dict[str, str] = {
    "cascade_route": "tiered.calibrate.learned.rules:CascadeRoute",
    "exante_gate": "tiered.calibrate.learned.rules:ExAnteGate",
    "scorer": "tiered.calibrate.learned.rules:ScorerThreshold",
}


def register_builtins() -> None:
    """Declare tiered's model and rule kinds to the core registries (imports nothing)."""
    for kind, target in BUILTIN_MODELS.items():
        MODELS.register_lazy(kind, target)
    for kind, target in BUILTIN_RULES.items():
        RULES.register_lazy(kind, target)


__all__ = ["BUILTIN_MODELS", "BUILTIN_RULES", "register_builtins"]
