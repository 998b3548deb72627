"""Fuzzing every loader: hostile files from hypothesis, and the verdict on each.

A case is a file (bytes) built from a valid one by structural edits (a value replaced by
a hostile one, a key dropped or added) and byte-level edits (bad UTF-8, truncation, deep
nesting, YAML aliases ...). A loader passes a case when it returns a valid result or
raises a :class:`~tiered.errors.TieredError` that names the file; anything else (another
exception, a result that breaks its own invariants, a case over the time limit) is a
finding. ``tests/test_fuzz_loaders.py`` runs a few examples per loader;
``benchmarks/fuzz.py`` runs thousands and counts the findings.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import strategies as st

from tiered.errors import TieredError

# --------------------------------------------------------------------------- verdicts


class Hang(Exception):
    """A case ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (a hang guard, not a timing)."""

    def _alarm(signum: int, frame: Any) -> None:
        raise Hang(f"over {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Verdict:
    """What a loader did with one case."""

    outcome: str  # "ok" | "error" (a clean located TieredError) | "finding"
    detail: str = ""
    seconds: float = 0.0

    @property
    def finding(self) -> bool:
        return self.outcome == "finding"


def judge(check: Callable[[Path], None], path: Path, limit_s: float = 60.0) -> Verdict:
    """Run ``check(path)``: ok, a clean error naming ``path``, or a finding (with why)."""
    t0 = time.perf_counter()
    try:
        with time_limit(limit_s):
            check(path)
    except Hang as exc:
        return Verdict("finding", f"hang: {exc}", time.perf_counter() - t0)
    except TieredError as exc:
        took = time.perf_counter() - t0
        where = getattr(exc, "path", None)
        if hasattr(exc, "path") and where is None:
            return Verdict("finding", f"unlocated {type(exc).__name__}: {exc}", took)
        if "\n" in str(exc):
            return Verdict("finding", f"a message of several lines: {exc!r}"[:500], took)
        return Verdict("error", str(exc)[:300], took)
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc)[-6:])
        return Verdict("finding", f"{type(exc).__name__}: {exc}\n{tb}"[:3000], 0.0)
    return Verdict("ok", "", time.perf_counter() - t0)


# --------------------------------------------------------------------------- values

_SPECIAL_STRINGS = [
    "",
    " ",
    "\t\n",
    "\x00",
    "\x1b[2J",
    "[/]",
    "[bold]x",
    "\ud800",  # a lone surrogate: valid JSON (escaped), not encodable as UTF-8
    "é" * 3,
    "x" * 300,
    "x" * 5000,
    "../../etc/passwd",
    "os:system",
    "!!python/object/apply:os.system ['touch pwned']",
    "-Infinity",
    "NaN",
    "1e999",
]
_SPECIAL_NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2**63,
    10**400,
    -(10**400),
    0.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
]


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(_SPECIAL_STRINGS),
    st.sampled_from(_SPECIAL_NUMBERS),
)
hostile_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
    st.sampled_from([_deep(70), _deep(300), [], {}]),
)
hostile_keys = st.one_of(st.text(max_size=8), st.sampled_from(_SPECIAL_STRINGS))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON-like value (the root included)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def edited(draw: st.DrawFn, base: Any, max_edits: int = 3) -> Any:
    """``base`` with up to ``max_edits`` structural edits: replace, drop or add a value."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, max_edits))):
        paths = list(_paths(obj))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "dup"]))
        if not path:
            if op == "replace":
                obj = copy.deepcopy(draw(hostile_values))
            continue
        parent, key = _get(obj, path[:-1]), path[-1]
        # values are copied: sampled ones are shared, and a later edit may change them
        if op == "replace":
            parent[key] = copy.deepcopy(draw(hostile_values))
        elif op == "drop":
            del parent[key]
        elif op == "dup" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "add":
            target = parent[key]
            if isinstance(target, dict):
                target[draw(hostile_keys)] = copy.deepcopy(draw(hostile_values))
            elif isinstance(target, list):
                target.append(copy.deepcopy(draw(hostile_values)))
    return obj


_CHUNKS = [
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\r",
    b"\n",
    b"\n\n",
    b'"',
    b"{",
    b"[" * 3000,
    b"}",
    b"Infinity",
    b"NaN",
    b"9" * 5000,
    b"\\ud800",
    b"&a ",
    b"*a",
    b"!!python/object/apply:os.system ['true'] ",
    b"? ",
    b"\t",
    b"---\n",
    b"- ",
    b": ",
]


@st.composite
def byte_edits(draw: st.DrawFn, data: bytes, max_edits: int = 3) -> bytes:
    """``data`` with up to ``max_edits`` byte-level edits (insert, delete, truncate, ...)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["insert", "chunk", "delete", "truncate", "flip", "dupline"]))
        at = draw(st.integers(0, len(buf)))
        if op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "chunk":
            buf[at:at] = draw(st.sampled_from(_CHUNKS))
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del buf[at:]
        elif op == "flip" and at < len(buf):
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "dupline":
            lines = bytes(buf).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            buf = bytearray(b"\n".join(lines))
    return bytes(buf)


def _dumps(obj: Any) -> bytes:
    # lone surrogates cannot be UTF-8 encoded: keep them as JSON escapes
    return json.dumps(obj, allow_nan=True).encode("utf-8")


def jsonl_lines(records: Any) -> bytes:
    rows = records if isinstance(records, list) else [records]
    return b"".join(_dumps(r) + b"\n" for r in rows)


def jsonl_file(records: list[Any]) -> st.SearchStrategy[bytes]:
    """A JSONL file from ``records`` after structural and byte-level edits."""
    return edited(records).flatmap(lambda rs: byte_edits(jsonl_lines(rs)))


def yaml_file(config: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A YAML file from ``config`` after structural and byte-level edits."""

    def dump(obj: Any) -> bytes:
        try:
            return yaml.safe_dump(obj, sort_keys=False, allow_unicode=False).encode("utf-8")
        except (yaml.YAMLError, UnicodeEncodeError):
            return _dumps(obj)  # JSON is YAML too

    return edited(config).flatmap(lambda c: byte_edits(dump(c)))


# valid but extreme: what a loader must accept, and what must then not break the engine
_names = st.one_of(
    st.sampled_from(["small", "big", "[/]", "é-model", "m" * 256, "a/b:c", "0"]),
    st.text(alphabet=st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=12),
)
_costs = st.one_of(st.sampled_from([0.0, 5e-324, 1e-12, 1e6, 1e15]), st.floats(0, 10))
_signals = st.one_of(st.sampled_from([-math.inf, 0.0, -1e300, -5e-324]), st.floats(-1e6, 0))


@st.composite
def extreme_replay_log(draw: st.DrawFn) -> bytes:
    """A valid replay log with extreme values: zero and huge costs, -inf log-probs,
    missing outputs, one model or many, names of every kind."""
    models = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    lines = []
    for i in range(draw(st.integers(1, 12))):
        present = draw(st.lists(st.sampled_from(models), min_size=1, unique=True))
        outputs = {}
        for m in present:
            out: dict[str, Any] = {"cost": draw(_costs)}
            if draw(st.booleans()):
                out["correct"] = draw(st.booleans())
            else:
                out["score"] = draw(st.floats(0, 1))
            if draw(st.booleans()):
                out["logprob"] = draw(_signals)
            if draw(st.booleans()):
                out["samples"] = draw(st.lists(st.sampled_from(["A", "B"]), max_size=5))
            if draw(st.booleans()):
                out["answer"] = draw(st.sampled_from(["A", "B", None, 42]))
            outputs[m] = out
        lines.append({"id": f"q{i}", "input": f"question {i}", "outputs": outputs})
    return jsonl_lines(lines)


# --------------------------------------------------------------------------- seeds


def replay_records(n: int = 6) -> list[dict[str, Any]]:
    """A small valid replay log: a cheap model with a log-prob, an expensive one."""
    return [
        {
            "id": f"q{i}",
            "task": "t",
            "input": f"question {i}" if i % 2 else [{"role": "user", "content": f"q {i}"}],
            "reference": "A",
            "outputs": {
                "small": {
                    "answer": "A" if i % 3 else "B",
                    "correct": bool(i % 3),
                    "cost": 0.001,
                    "latency_ms": 12.0,
                    "tokens_in": 10,
                    "tokens_out": 1,
                    "logprob": -0.1 * i,
                    "samples": ["A", "B", "A"],
                },
                "big": {"answer": "A", "correct": True, "score": 1.0, "cost": 0.01},
            },
        }
        for i in range(n)
    ]


def source_records(n: int = 6) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"text number {i}", "label": "ab"[i % 2]} for i in range(n)]


CASCADE = {
    "name": "fuzz",
    "stages": [
        {
            "name": "small",
            "model": {"kind": "replay", "model": "small"},
            "rule": {"kind": "threshold", "signal": "logprob", "threshold": -0.25},
            "cost": {"kind": "recorded"},
        },
        {"name": "big", "model": {"kind": "replay", "model": "big"}},
    ],
    "metadata": {"objective": "quality >= top"},
}

RUN_CONFIG = {
    "input": {"text_field": "text", "id_field": "id", "label_field": "label"},
    "cheap": [{"name": "ngrams", "model": {"kind": "hashed_ngram", "n_features": 1024}}],
    "expert": {"model": {"kind": "label_column", "field": "label"}, "usd_per_call": 0.002},
    "online": {"target_agreement": 0.9},
    "seed": 0,
    "batch_size": 8,
    "checkpoint": {"every_items": 100, "every_seconds": 5},
}

GATEWAY = {
    "server": {"deadline_s": 5, "max_in_flight": 8, "max_body_bytes": 65536},
    "budgets": {"default_usd": 1.0, "per_key": {"alice": 2.0}},
    "cascades": [
        {
            "name": "bot",
            "task": "chat",
            "on_error": "defer",
            "reserve_usd": 0.002,
            "stages": [
                {
                    "name": "small",
                    "model": {
                        "kind": "openai",
                        "base_url": "http://127.0.0.1:9/v1",
                        "model": "small",
                        "api_key_env": None,
                    },
                    "rule": {"kind": "threshold", "signal": "logprob", "threshold": -0.5},
                },
                {
                    "name": "big",
                    "model": {
                        "kind": "openai",
                        "base_url": "http://127.0.0.1:9/v1",
                        "model": "big",
                        "api_key_env": None,
                    },
                },
            ],
        }
    ],
}


# --------------------------------------------------------------------------- checks


def check_replay(path: Path) -> None:
    """Load a replay log; a log that loads must keep the invariants the engine relies on."""
    from tiered.core.limits import name_problem
    from tiered.replay.load import load_replay

    log = load_replay(path, skip_bad=False)
    n, k = len(log), log.n_models
    assert n > 0 and k > 0
    assert len(set(log.ids)) == n, "duplicate ids"
    assert len(set(log.models)) == k and all(name_problem(m) is None for m in log.models)
    for a in (log.present, log.quality, log.cost, log.latency_ms, log.answers):
        assert a.shape == (n, k)
    assert np.isfinite(log.quality).all() and ((log.quality >= 0) & (log.quality <= 1)).all()
    assert np.isfinite(log.cost).all() and (log.cost >= 0).all()
    for name, v in log.signals.items():
        assert v.shape == (n, k) and not (v == np.inf).any(), name
    log.mean_quality(), log.mean_cost(), log.missing_counts()


def check_replay_skip_bad(path: Path) -> None:
    """The same log with --skip-bad: rejects go to a file, never a crash."""
    from tiered.replay.load import load_replay

    load_replay(path, skip_bad=True, reject_path=path.with_suffix(".rejects.jsonl"))


def fixed_log(folder: Path) -> Any:
    from tiered.replay.load import load_replay

    good = folder / "fixed.jsonl"
    if not good.exists():
        good.write_bytes(jsonl_lines(replay_records()))
    return load_replay(good)


def check_cascade(path: Path) -> None:
    """Load a cascade file, build it on a fixed log and evaluate it (as ``tiered eval``)."""
    from tiered.core.spec import BuildContext, load_cascade
    from tiered.eval import evaluate_cascade

    log = fixed_log(path.parent)
    ctx = BuildContext(base_dir=path.parent, resources={"replay_log": log})
    cascade = load_cascade(path, ctx)
    evaluate_cascade(cascade, log)


def check_run_config(path: Path) -> None:
    """Load a run config and build its cascade (as ``tiered run`` does before reading)."""
    from tiered.runner.build import build_cascade
    from tiered.runner.plan import make_plan

    data = path.parent / "in.jsonl"
    if not data.exists():
        data.write_bytes(jsonl_lines(source_records()))
    plan = make_plan([str(path), str(data)], path.parent / "out.jsonl", progress=False)
    build_cascade(plan)


def check_gateway(path: Path) -> None:
    """Load a gateway file and build the gateway (as ``tiered serve`` does before listening)."""
    from tiered.serve import Gateway, load_gateway_config

    config = load_gateway_config([path])
    Gateway.from_config(config).close()


def source_check(suffix: str, fields: dict[str, Any]) -> Callable[[Path], None]:
    """Read every batch of a source file; items must be well formed, rejects located."""

    def check(path: Path) -> None:
        from tiered.io.sources import FieldMap, open_source

        src = open_source(path, FieldMap(**fields))
        last = -1
        for batch in src.batches(batch_size=4):
            for item, off in zip(batch.items, batch.offsets, strict=True):
                assert isinstance(item.id, str) and item.id, item.id
                assert isinstance(item.input, str) and item.input.strip()
                assert off > last
                last = off
            for r in batch.rejects:
                assert str(path) in r.reason or path.name in r.reason, r.reason
                json.dumps(r.to_json())

    check.__name__ = f"check_{suffix}"
    return check


def parquet_bytes(records: list[Any]) -> bytes | None:
    """``records`` as a Parquet file, or None when pyarrow cannot type them (mixed types)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for r in records if isinstance(r, dict)]
    try:
        table = pa.Table.from_pylist(rows)
        buf = io.BytesIO()
        pq.write_table(table, buf)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return buf.getvalue()


def csv_bytes(records: list[Any]) -> bytes:
    """``records`` as CSV (header from the first record's keys)."""
    import csv
    import io

    rows = [r for r in records if isinstance(r, dict)]
    header = list(rows[0]) if rows else ["text"]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    for r in rows:
        w.writerow([r.get(h, "") for h in header])
    return out.getvalue().encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Loader:
    """One loader under fuzz: how to make a case, what file name it gets, how to check it."""

    name: str
    files: st.SearchStrategy[bytes]
    filename: str
    check: Callable[[Path], None]


def loaders() -> list[Loader]:
    src_fields = {"text_field": "text", "id_field": "id", "label_field": "label"}
    records = edited(source_records())
    parquet = records.map(lambda rs: parquet_bytes(rs if isinstance(rs, list) else []))
    csv = records.map(lambda rs: csv_bytes(rs if isinstance(rs, list) else [])).flatmap(byte_edits)
    corrupt_parquet = st.just(parquet_bytes(source_records()) or b"").flatmap(byte_edits)
    return [
        Loader("replay log", jsonl_file(replay_records()), "log.jsonl", check_replay),
        Loader("replay log (extreme)", extreme_replay_log(), "log.jsonl", check_replay),
        Loader(
            "replay log (skip bad)",
            jsonl_file(replay_records()),
            "log.jsonl",
            check_replay_skip_bad,
        ),
        Loader("cascade YAML", yaml_file(CASCADE), "cascade.yaml", check_cascade),
        Loader("run YAML", yaml_file(RUN_CONFIG), "run.yaml", check_run_config),
        Loader("gateway YAML", yaml_file(GATEWAY), "gateway.yaml", check_gateway),
        Loader(
            "JSONL source",
            jsonl_file(source_records()),
            "in.jsonl",
            source_check("jsonl", src_fields),
        ),
        Loader(
            "CSV source",
            csv,
            "in.csv",
            source_check("csv", src_fields),
        ),
        Loader(
            "Parquet source",
            st.one_of(parquet.filter(lambda b: b is not None), corrupt_parquet),
            "in.parquet",
            source_check("parquet", src_fields),
        ),
    ]
