"""Where a Redis stream run reads, writes and keeps its local files (by URL alone)."""

from __future__ import annotations

import re
from pathlib import Path

from tiered.errors import ConfigError
from tiered.io.redis_url import StreamURL, is_stream_url, parse_stream_url


def uses_streams(input: str, output: str | Path) -> bool:
    """Whether a run reads or writes a Redis stream (else: files)."""
    return is_stream_url(input) or is_stream_url(str(output))


def stream_output(output: str) -> StreamURL:
    """The OUTPUT of a run whose INPUT is a stream: it must be a stream too."""
    if not is_stream_url(output):
        raise ConfigError(
            "a Redis stream INPUT needs a Redis stream OUTPUT (-o redis://HOST:PORT/STREAM): "
            "only a shared output stream knows which entries every worker already answered",
            field="--output",
        )
    return parse_stream_url(output, role="output")


def default_stem(input: str, output: str) -> Path:
    """Where a stream run keeps its local files by default: ``OUT.CONSUMER`` in the
    working folder (each worker of a fleet has its own)."""
    out = stream_output(output).stream
    parts = [out]
    if is_stream_url(input):
        parts.append(parse_stream_url(input, role="input").params["consumer"])
    return Path(re.sub(r"[^\w.-]+", "_", ".".join(parts)))


def local_paths(input: str, output: str) -> tuple[Path, Path | str]:
    """The default local store and rejects of a stream run: a stream input's rejects go
    to its dead-letter stream (a URL), a file input's to a local file."""
    stem = default_stem(input, output)
    if is_stream_url(input):
        url = parse_stream_url(input, role="input")
        dead = f"{url.scheme}://{url.host}:{url.port}/{url.params['dead']}"
        return Path(f"{stem}.tiered.sqlite"), dead
    return Path(f"{stem}.tiered.sqlite"), Path(f"{stem}.rejects.jsonl")


__all__ = ["default_stem", "local_paths", "stream_output", "uses_streams"]
