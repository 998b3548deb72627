"""A resumable stream run as a library: what ``tiered run`` and ``tiered demo`` call.

- :mod:`~tiered.runner.protocols`: :class:`Source` and :class:`Sink`, whose positions are
  opaque JSON tokens (a file offset, a stream id), and how a sink is opened.
- :mod:`~tiered.runner.checkpoint`: the checkpoint protocol: every position, the counters
  and the learned state committed in one store transaction.
- :mod:`~tiered.runner.plan`: :class:`RunPlan` (config + paths + switches),
  :func:`make_plan` and the zero-config :func:`quick_config`.
- :mod:`~tiered.runner.stream`: :class:`StreamRun`, one session: resume, stream,
  checkpoint, summarise.
- :mod:`~tiered.runner.streams`: Redis Streams endpoints (a ``redis://`` INPUT or OUTPUT),
  :mod:`~tiered.online.fleet`: what the workers on one stream share (labels, audit counts,
  snapshots) to act as one cascade.
- :mod:`~tiered.runner.files`: the file endpoints (input file or stdin; output, reject and
  replay files); :mod:`~tiered.runner.counters`, :mod:`~tiered.runner.summary`: what a run
  counts and reports; :mod:`~tiered.runner.progress`: the progress bar and summary table.
- :mod:`~tiered.runner.certified`: ``tiered run --certify``, certified batch labelling of
  a finite file (:class:`CertifiedRun`; the spec from :func:`parse_certify`).
- :mod:`~tiered.runner.ray_batch`: ``tiered batch``, a large file or folder on Ray Data
  (learn on a sample, freeze, one actor pool per stage; Parquet partitions written once),
  with :mod:`~tiered.runner.ray_plan`, :mod:`~tiered.runner.ray_parts` and
  :mod:`~tiered.runner.ray_stages`.

>>> from tiered.runner import make_plan, StreamRun  # doctest: +SKIP
>>> plan = make_plan(["run.yaml", "in.jsonl"], Path("out.jsonl"))  # doctest: +SKIP
>>> summary = StreamRun(plan).run()  # doctest: +SKIP
"""

from tiered.runner.build import ModelWrapper, RunCascade, build_cascade
from tiered.runner.certified import CertifiedRun, CertifiedSummary, CertifySpec, parse_certify
from tiered.runner.checkpoint import Checkpointer, Endpoints, Resumed
from tiered.runner.counters import LearnerStats, RunCounters
from tiered.runner.files import DecisionFile, JsonlFile, file_endpoints
from tiered.runner.plan import QuickOptions, RunPlan, make_plan, quick_config
from tiered.runner.progress import RichProgress, RunView, print_summary
from tiered.runner.protocols import (
    Batch,
    Opening,
    Position,
    Rejected,
    SharedLearning,
    Sink,
    SinkOpener,
    Source,
)
from tiered.runner.stream import StreamRun
from tiered.runner.streams import plan_endpoints
from tiered.runner.summary import RunSummary

__all__ = [
    "Batch",
    "CertifiedRun",
    "CertifiedSummary",
    "CertifySpec",
    "Checkpointer",
    "DecisionFile",
    "Endpoints",
    "JsonlFile",
    "LearnerStats",
    "ModelWrapper",
    "Opening",
    "Position",
    "QuickOptions",
    "Rejected",
    "Resumed",
    "RichProgress",
    "RunCascade",
    "RunCounters",
    "RunPlan",
    "RunSummary",
    "RunView",
    "SharedLearning",
    "Sink",
    "SinkOpener",
    "Source",
    "StreamRun",
    "build_cascade",
    "file_endpoints",
    "make_plan",
    "parse_certify",
    "plan_endpoints",
    "print_summary",
    "quick_config",
]
