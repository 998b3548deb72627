"""File endpoints of a run: the input file (or stdin) and the output, reject and replay files.

A file sink's position token is its committed byte length (an int); opened ``new`` it
must be missing or empty (a file with data and no saved run that knows it is refused, not
truncated), ``fresh`` it is cut to nothing, ``resume`` it is cut back to its position.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tiered.errors import ConfigError, StoreError
from tiered.io.sinks import DecisionWriter, JsonlWriter
from tiered.io.sources import STDIN, FieldMap, open_source
from tiered.runner.checkpoint import Endpoints
from tiered.runner.protocols import Opening, Position, Sink, SinkOpener
from tiered.runner.reject_guard import check_input, read_ahead

if TYPE_CHECKING:
    from tiered.config.run import InputConfig
    from tiered.runner.plan import RunPlan


def _committed(opening: Opening, position: Position | None, path: Path) -> int | None:
    """The byte length to resume a file at (None: a new run, the file must be empty)."""
    if opening == "new":
        return None
    if position is None:
        return 0
    if type(position) is not int or position < 0:
        raise StoreError(
            f"the state store holds {position!r} as the committed length of {path}, not a byte "
            "count; pass --fresh to start over"
        )
    return position


@dataclass(frozen=True)
class DecisionFile:
    """Opens the output file (JSONL or CSV by its extension)."""

    path: Path

    def __call__(self, opening: Opening, position: Position | None) -> Sink:
        return DecisionWriter(self.path, _committed(opening, position, self.path))


@dataclass(frozen=True)
class JsonlFile:
    """Opens a JSON-lines file (the reject file, the replay log)."""

    path: Path

    def __call__(self, opening: Opening, position: Position | None) -> Sink:
        return JsonlWriter(self.path, _committed(opening, position, self.path))


def ensure_folders(paths: Mapping[str, Path | None]) -> None:
    """Create the folder of every path (keyed by its option); a path that cannot be a file
    (under a regular file, say) is a :class:`ConfigError` naming its option."""
    for flag, path in paths.items():
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder of {path}: {exc.strerror or exc}", field=flag
            ) from None
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give a file path", field=flag)


def file_endpoints(plan: RunPlan) -> Endpoints:
    """The plan's input file (or stdin) and output, reject and replay files (their folders
    are made when the run starts: :func:`ensure_folders`).

    The input's first records are checked first (:func:`check_input`): an input its
    settings do not fit stops here, before the run's state or output exist. Each id is
    answered once: a record repeating an earlier id goes to the reject file.
    """
    inp = plan.config.input
    fields = field_map(inp, unique_ids=True)
    stream = None
    if plan.input == STDIN and plan.max_reject_share < 1:
        head, stream = read_ahead(sys.stdin.buffer, plan.reject_window)
        ahead = open_source(STDIN, fields, format=inp.format, stream=io.BytesIO(head))
        check_input(
            ahead, max_share=plan.max_reject_share, window=plan.reject_window, limit=plan.limit
        )
    else:
        ahead = open_source(plan.input, fields, format=inp.format)
        check_input(
            ahead, max_share=plan.max_reject_share, window=plan.reject_window, limit=plan.limit
        )
    source = open_source(plan.input, fields, format=inp.format, stream=stream)
    output = Path(plan.output)
    sinks: dict[str, SinkOpener] = {
        "output": DecisionFile(output),
        "rejects": JsonlFile(Path(plan.rejects)),
    }
    if plan.replay_out is not None:
        sinks["replay"] = JsonlFile(plan.replay_out)
    return Endpoints(
        source=source,
        sinks=sinks,
        input_id=plan.input if plan.input == STDIN else str(Path(plan.input).resolve()),
        output_id=str(output.resolve()),
    )


def field_map(inp: InputConfig, *, unique_ids: bool = False) -> FieldMap:
    """The record fields a run reads, from the input config (``unique_ids``: reject a
    record whose id came before, see :class:`~tiered.io.sources.FieldMap`)."""
    return FieldMap(
        text_field=inp.text_field,
        id_field=inp.id_field,
        label_field=inp.label_field,
        required_fields=tuple(inp.required_fields),
        unique_ids=unique_ids,
    )


__all__ = ["DecisionFile", "JsonlFile", "ensure_folders", "field_map", "file_endpoints"]
