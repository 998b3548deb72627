"""State that outlives a process, in SQLite (WAL): every table tiered keeps.

- :mod:`tiered.store.runs`: ``tiered run`` checkpoints (positions, counters, learner state);
- :mod:`tiered.store.response_cache`: LLM responses already paid for;
- :mod:`tiered.store.learner_state`: the gateway's online cascades;
- :mod:`tiered.store.gateway_spend`: what each gateway key has spent.

Gateway replicas keep the same state in Redis instead (:mod:`tiered.store.redis_shared`):
spend in :mod:`tiered.store.redis_spend` (a :class:`~tiered.store.ledger.Ledger`),
responses in :mod:`tiered.store.redis_cache`.

Each component's tables carry a schema version (:mod:`tiered.store.schema`). Learned state
is saved as arrays + JSON (:mod:`tiered.store.state`): loading a store never runs code.
"""

from tiered.store.runs import Checkpoint, RunIdentity, RunStore
from tiered.store.sqlite import connect

__all__ = ["Checkpoint", "RunIdentity", "RunStore", "connect"]
