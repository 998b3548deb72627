"""Redis Streams endpoints of a run: a ``redis://`` INPUT or OUTPUT picks them.

- INPUT ``redis://HOST:PORT/STREAM?group=G&consumer=C``: this run is one consumer of the
  group (:class:`~tiered.io.redis_streams.RedisStreamSource`). Its OUTPUT must be a
  stream too: only a shared output can tell which entries any worker already answered.
  Rejected records go to the input's dead-letter stream (``dead=``), once each.
- OUTPUT ``redis://HOST:PORT/OUT_STREAM``: one entry per decision, written, marked done
  and acknowledged in one atomic step (exactly once per input id across workers). A
  file INPUT may write to a stream too (a re-run after a kill skips the ids it holds).
- With ``share=1`` (the default) the workers writing one output learn as one cascade
  (:mod:`tiered.online.fleet`).

Each worker keeps its own checkpoints (learned state, counters) in a local store,
``OUT_STREAM.CONSUMER.tiered.sqlite`` by default; ``--fresh`` starts that over and never
deletes anything in Redis.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered.io.redis_streams import RedisStreamSink, RedisStreamSource
from tiered.io.redis_url import StreamURL, is_stream_url, parse_stream_url
from tiered.io.sources import STDIN, open_source
from tiered.online.fleet import Fleet
from tiered.runner.checkpoint import Endpoints
from tiered.runner.files import JsonlFile, field_map, file_endpoints
from tiered.runner.protocols import Opening, Position, Sink, SinkOpener, Source
from tiered.runner.stream_paths import stream_output, uses_streams

if TYPE_CHECKING:
    from tiered.runner.plan import RunPlan


@dataclass(frozen=True)
class _Ready:
    """A sink that is the same however the run opens (a stream keeps no cut-back point:
    it never holds answers twice)."""

    sink: Sink

    def __call__(self, opening: Opening, position: Position | None) -> Sink:
        return self.sink


def plan_endpoints(plan: RunPlan) -> Endpoints:
    """The plan's endpoints: Redis streams when its INPUT or OUTPUT is a stream URL,
    else files (:func:`tiered.runner.files.file_endpoints`)."""
    return stream_endpoints(plan) if uses_streams(plan.input, plan.output) else file_endpoints(plan)


def stream_endpoints(plan: RunPlan) -> Endpoints:
    """The plan's endpoints when its INPUT or OUTPUT is a Redis stream."""
    inp = is_stream_url(plan.input)
    out = stream_output(str(plan.output))
    in_url = parse_stream_url(plan.input, role="input") if inp else None
    fields = field_map(plan.config.input)
    client = out.client()
    try:
        source: Source
        if in_url is not None:
            source = RedisStreamSource(in_url, fields, exit_when_idle=plan.exit_when_idle)
            worker = in_url.params["consumer"]
        else:
            source = open_source(plan.input, fields, format=plan.config.input.format)
            worker = socket.gethostname()
        fleet = _fleet(out, client, worker, plan.config.identity_hash())
        output = RedisStreamSink(
            client,
            out.stream,
            out.params["done"],
            ack=None if in_url is None else (in_url.stream, in_url.params["group"]),
            tally=fleet.tally if fleet is not None else None,
            tally_key=fleet.keys.counters if fleet is not None else None,
            on_totals=fleet.on_totals if fleet is not None else None,
            done_keep_s=out.number("done_keep"),
            owns_client=True,
        )
    except BaseException:
        client.close()
        raise
    sinks: dict[str, SinkOpener] = {"output": _Ready(output)}
    if isinstance(plan.rejects, Path):  # a file input's, or --rejects FILE
        sinks["rejects"] = JsonlFile(plan.rejects)
    elif in_url is not None:
        dead = in_url.params["dead"]
        sinks["rejects"] = _Ready(RedisStreamSink(client, dead, f"{dead}:ids", key_field="entry"))
    if plan.replay_out is not None:
        sinks["replay"] = JsonlFile(plan.replay_out)
    return Endpoints(
        source=source,
        sinks=sinks,
        input_id=_identity(in_url) if in_url else _file_id(plan.input),
        output_id=str(out),
        shared=fleet,
    )


def _fleet(out: StreamURL, client: Any, worker: str, identity: str) -> Fleet | None:
    if out.params["share"] != "1":
        return None
    return Fleet(
        client,
        out.client(decode=False),
        out.stream,
        worker,
        identity,
        snapshot_every_s=out.number("snapshot_every"),
    )


def _identity(url: StreamURL) -> str:
    """The input of a stream run: stream, group and consumer (a store is one worker's)."""
    return f"{url}?group={url.params['group']}&consumer={url.params['consumer']}"


def _file_id(path: str) -> str:
    return path if path == STDIN else str(Path(path).resolve())


__all__ = ["plan_endpoints", "stream_endpoints"]
