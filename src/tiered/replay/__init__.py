"""The recorded-output log: loading, per-model matrices, views, the replay model, synthetic logs.

A replay log holds real outputs of real models (one JSON object per query); calibration,
evaluation and the learned estimators all read it through :class:`ReplayLog`.
"""

from tiered.replay.load import load_replay
from tiered.replay.log import ReplayLog

__all__ = ["ReplayLog", "load_replay"]
