"""Load and validate a replay log: recorded outputs of several models for each query.

One JSON object per line (see ``docs``/DESIGN "Replay log")::

    {"id": "mmlu/17", "task": "mmlu", "input": "..." | [{"role": ..., "content": ...}],
     "reference": "B",
     "outputs": {"gpt-4o": {"answer": "B", "correct": true, "cost": 1.2e-05,
                            "latency_ms": 240.0, "tokens_in": 121, "tokens_out": 1,
                            "logprob": -0.04, "samples": ["B", "B", "C"]}}}

Rules the loader enforces (a bad line is a :class:`~tiered.errors.DataError` naming
file, line and field; with ``skip_bad=True`` it goes to a reject file instead):

- ``id`` is a non-empty string of at most 4,096 characters (an integer is taken as its
  decimal string).
- ``outputs`` maps model names (non-empty, printable, at most 256 characters) to objects
  with ``cost`` (USD, a finite number >= 0) and the quality: ``correct`` (JSON true/false;
  1 and 0 are refused, they are often a score) if present, else ``score`` (in [0, 1]).
- ``answer`` may be null or absent (RouteLLM's MMLU records correctness only).
- ``latency_ms``, ``tokens_in``, ``tokens_out`` are numbers in [0, 1e15] or null (a cost
  too is at most 1e15); ``samples`` a
  list of strings; ``task`` a string; ``input`` a string or a list of chat messages.
- Every other numeric field of an output (``logprob``, ``score`` next to ``correct``, any
  numeric extra) becomes a confidence *signal*; booleans and strings are metadata and
  are ignored (``tokens_estimated``). ``samples`` also give the ``vote`` signal. A signal
  is a number or ``-Infinity`` (the least confident value there is: a log-prob that
  underflowed); ``NaN`` and ``+Infinity`` are refused, and ``logprob`` must be <= 0.
- A line is UTF-8 JSON of at most 64 MiB, nested at most 64 levels deep, and no object
  in it repeats a key (JSON parsers would silently keep the last value).
- An id seen twice is an error, except when the two lines hold the *same query* (same
  input) with outputs of *different* models: some public logs (RouterBench) record one
  query over two lines, and those are merged (counted in ``merged_duplicates``).

Models are ordered by mean cost over the queries they answered, cheapest first. A query
lacking a model's output gets ``present=False``, quality 0 (counted wrong) and that
model's mean cost; :meth:`ReplayLog.missing_counts` reports how many per model.

A ``score`` that merely repeats ``correct`` on every query (RouterBench) is the grade
itself, not a confidence: using it as a signal would leak the label, so it is dropped
and a note says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiered.core.limits import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_LINE_BYTES,
    name_problem,
    nesting_depth,
    shorten,
)
from tiered.core.signals import vote_share
from tiered.errors import DataError
from tiered.replay.log import ReplayLog

_INF = math.inf
# Costs, latencies and token counts above this are not measurements; and a log's sums
# and means of them must stay finite (two costs of 1e308 add up to infinity).
_BIG = 1e15
# Fields of an output with a fixed meaning; anything else numeric is a signal.
_KNOWN = frozenset(
    {"answer", "correct", "score", "cost", "latency_ms", "tokens_in", "tokens_out", "samples"}
)


class _Bad(Exception):
    """A bad field in the line being read (located by the caller)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _show(value: Any) -> str:
    if isinstance(value, list | dict) and nesting_depth(value, 8) > 8:
        return f"a {type(value).__name__} nested more than 8 deep"  # repr would recurse
    return shorten(repr(value))


def _number(
    value: Any,
    field: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    null: bool = False,
    infinite: bool = False,
) -> float:
    """``value`` as a float within [lo, hi] (NaN for null when allowed).

    Infinities are refused unless ``infinite``: a signal may be ``-Infinity`` (a log-prob
    that underflowed is the least confident value there is), a cost may not.
    """
    if value is None and null:
        return math.nan
    t = type(value)
    # fast path for the common, valid case (bool is its own type, so it is not taken here)
    if (
        (t is float or t is int)
        and value == value  # not NaN
        and (infinite or -_INF < value < _INF)
        and (lo is None or value >= lo)
        and (hi is None or value <= hi)
    ):
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise _Bad(field, f"is too large a number. Got {_show(value)} instead") from None
    # slow path: numeric subclasses (numpy scalars from a caller) are fine, the rest is not
    number = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        as_float = float(value) if number else math.nan
    except OverflowError:  # an integer of hundreds of digits
        if hi is None or value <= hi:
            raise _Bad(field, f"is too large a number. Got {_show(value)} instead") from None
        as_float = math.inf
    if (
        number
        and not math.isnan(as_float)
        and (infinite or not math.isinf(as_float))
        and (lo is None or as_float >= lo)
        and (hi is None or as_float <= hi)
    ):
        return as_float
    want = "a number"
    if hi == _BIG:  # a sanity bound, named only to whom crosses it
        big = number and as_float > hi
        want = f"a number at most {hi:g}" if big else f"a number >= {lo:g}"
    elif lo is not None and hi is not None:
        want = f"a number in [{lo:g}, {hi:g}]"
    elif lo is not None:
        want = f"a number >= {lo:g}"
    raise _Bad(field, f"must be {want}{' or null' if null else ''}. Got {_show(value)} instead")


@dataclass(slots=True)
class _Output:
    answer: str | None
    quality: float
    cost: float
    latency_ms: float
    tokens_in: float
    tokens_out: float
    samples: list[str] | None
    signals: dict[str, float]
    score_is_grade: bool  # score given alongside correct and equal to it


@dataclass(slots=True)
class _Record:
    id: str
    task: str | None
    input: Any
    reference: Any
    outputs: dict[str, _Output]


def _parse_output(model: str, out: Any) -> _Output:
    where = f"outputs.{model}"
    if not isinstance(out, dict):
        raise _Bad(where, f"must be an object of recorded fields. Got {_show(out)} instead")
    correct = out.get("correct")
    score = out.get("score")
    if correct is None and score is None:
        raise _Bad(where, "needs 'correct' (true/false) or 'score' (0..1) as its quality")
    score_f = math.nan
    if score is not None:
        score_f = _number(score, f"{where}.score", lo=0.0, hi=1.0)
    if correct is not None:
        # exactly a JSON boolean: a 1 or 0 is as often a score or a count as a grade
        if type(correct) is not bool:
            raise _Bad(f"{where}.correct", f"must be true or false. Got {_show(correct)} instead")
        quality = 1.0 if correct else 0.0
    else:
        quality = score_f
    if "cost" not in out:
        raise _Bad(f"{where}.cost", "is required (USD for this call, a number >= 0)")
    cost = _number(out["cost"], f"{where}.cost", lo=0.0, hi=_BIG)
    answer = out.get("answer")
    if answer is not None and not isinstance(answer, str):
        if isinstance(answer, bool) or not isinstance(answer, int | float):
            raise _Bad(f"{where}.answer", f"must be a string or null. Got {_show(answer)} instead")
        answer = str(answer)  # a bare number, e.g. a GSM8K result
    latency = _number(out.get("latency_ms"), f"{where}.latency_ms", lo=0.0, hi=_BIG, null=True)
    t_in = _number(out.get("tokens_in"), f"{where}.tokens_in", lo=0.0, hi=_BIG, null=True)
    t_out = _number(out.get("tokens_out"), f"{where}.tokens_out", lo=0.0, hi=_BIG, null=True)
    samples = out.get("samples")
    if samples is not None and (
        not isinstance(samples, list) or not all(isinstance(s, str) for s in samples)
    ):
        raise _Bad(f"{where}.samples", f"must be a list of strings. Got {_show(samples)} instead")
    signals: dict[str, float] = {}
    for key, value in out.items():
        if key in _KNOWN or isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            problem = name_problem(key, "a signal name")
            if problem is not None:
                raise _Bad(where, f"{problem} (key {_show(key)})")
            v = _number(value, f"{where}.{key}", infinite=True)
            # -inf is the least confident value; +inf would outrank every real answer
            if v == _INF or (key == "logprob" and v > 0.0):
                want = "<= 0 (a log-probability)" if key == "logprob" else "finite or -Infinity"
                raise _Bad(f"{where}.{key}", f"must be {want}. Got {_show(value)} instead")
            signals[key] = v
    score_is_grade = False
    if correct is not None and score is not None:
        signals["score"] = score_f
        score_is_grade = score_f == quality
    return _Output(answer, quality, cost, latency, t_in, t_out, samples, signals, score_is_grade)


def _parse_record(obj: Any) -> _Record:
    if not isinstance(obj, dict):
        raise _Bad(None, f"a line must hold one JSON object. Got {_show(obj)} instead")
    if "id" not in obj:
        raise _Bad("id", "is required (a string naming the query)")
    rid = obj["id"]
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid or rid.isspace():
        raise _Bad("id", f"must be a non-empty string. Got {_show(rid)} instead")
    if len(rid) > MAX_ID_CHARS:
        raise _Bad("id", f"must be at most {MAX_ID_CHARS:,} characters. Got {len(rid):,}")
    task = obj.get("task")
    if task is not None:
        if not isinstance(task, str):
            raise _Bad("task", f"must be a string. Got {_show(task)} instead")
        problem = name_problem(task, "a task name")
        if problem is not None:
            raise _Bad("task", problem)
    inp = obj.get("input", "")
    chat = isinstance(inp, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in inp
    )
    if not isinstance(inp, str) and not chat:
        raise _Bad(
            "input",
            f"must be a string or a list of {{role, content}} messages. Got {_show(inp)} instead",
        )
    outputs = obj.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        raise _Bad(
            "outputs",
            f"must be a non-empty object mapping model names to outputs. Got {_show(outputs)} "
            "instead",
        )
    for m in outputs:
        problem = name_problem(m, "a model name")
        if problem is not None:
            raise _Bad("outputs", f"{problem} (key {_show(m)})")
    parsed = {m: _parse_output(m, o) for m, o in outputs.items()}
    return _Record(rid, task, inp, obj.get("reference"), parsed)


@dataclass
class _Reject:
    line: int
    reason: str
    raw: str
    field: str | None = None


@dataclass
class _Collected:
    records: list[_Record] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    rejects: list[_Reject] = field(default_factory=list)
    merged: int = 0


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice is an error, not "the last one wins"."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Bad(None, f"key {_show(key)} appears twice in one object")
            seen.add(key)
    return obj


def _parse_line(raw: bytes, first: bool) -> Any:
    """One line as JSON: UTF-8, at most MAX_DEPTH deep, no repeated keys (or raise _Bad)."""
    if first and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(None, f"not valid UTF-8 (byte {exc.start + 1} of the line)") from None
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise _Bad(None, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise _Bad(None, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # Python refuses to parse integers of more than 4,300 digits
        raise _Bad(None, "holds a number of more than 4,300 digits") from None
    # only a line with many brackets can be deep: the walk is skipped for the rest
    if text.count("[") + text.count("{") > MAX_DEPTH and nesting_depth(obj) > MAX_DEPTH:
        raise _Bad(None, f"nested deeper than {MAX_DEPTH} levels")
    return obj


def _lines(handle: Any) -> Any:
    """``(line number, bytes)`` of each line; a line over MAX_LINE_BYTES comes as None."""
    lineno = 0
    readline = handle.readline
    while raw := readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if len(raw) > MAX_LINE_BYTES:
            while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                raw = readline(1 << 20)
            yield lineno, None
            continue
        yield lineno, raw


def _collect(path: Path, skip_bad: bool) -> _Collected:
    """Parse and validate every line; merge split records; collect or raise on bad ones."""
    got = _Collected()
    row_of: dict[str, int] = {}
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a replay log", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None
    with handle:
        for lineno, raw in _lines(handle):
            if raw is not None and not raw.strip():
                continue
            try:
                if raw is None:
                    raise _Bad(None, f"longer than {MAX_LINE_BYTES // 2**20} MiB")
                rec = _parse_record(_parse_line(raw, lineno == 1))
                first = row_of.get(rec.id)
                if first is not None:
                    kept = got.records[first]
                    clash = sorted(set(kept.outputs) & set(rec.outputs))
                    if clash or kept.input != rec.input:
                        why = (
                            f"repeats model {_show(clash[0])}" if clash else "has a different input"
                        )
                        raise _Bad(
                            "id",
                            f"duplicate id {_show(rec.id)} (first on line {got.lines[first]}); "
                            f"this line {why}",
                        )
                    kept.outputs.update(rec.outputs)
                    got.merged += 1
                    continue
            except _Bad as bad:
                if not skip_bad:
                    raise DataError(bad.message, path=path, line=lineno, field=bad.field) from None
                located = str(DataError(bad.message, path=path, line=lineno, field=bad.field))
                text = "" if raw is None else raw.decode("utf-8", "replace").rstrip("\r\n")
                got.rejects.append(_Reject(lineno, located, text, bad.field))
                continue
            row_of[rec.id] = len(got.records)
            got.records.append(rec)
            got.lines.append(lineno)
    return got


def _write_rejects(rejects: list[_Reject], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rejects:
            f.write(
                json.dumps({"line": r.line, "field": r.field, "reason": r.reason, "raw": r.raw})
                + "\n"
            )


def _build(path: Path, got: _Collected) -> ReplayLog:
    """Turn validated records into the model-by-query matrices of a ReplayLog."""
    recs = got.records
    n = len(recs)
    first_seen: dict[str, int] = {}
    for r in recs:
        for m in r.outputs:
            first_seen.setdefault(m, len(first_seen))
    names = list(first_seen)
    k = len(names)
    col = {m: j for j, m in enumerate(names)}

    # Gather flat cell lists first, then fill each matrix with one fancy-index assignment
    # (per-cell numpy setitem is several times slower on large logs).
    ri: list[int] = []
    ci: list[int] = []
    q: list[float] = []
    c: list[float] = []
    lat: list[float] = []
    tin: list[float] = []
    tout: list[float] = []
    ans: list[str | None] = []
    smp: list[tuple[int, int, list[str]]] = []
    sig: dict[str, tuple[list[int], list[float]]] = {}
    grade_like = np.ones(k, dtype=bool)  # score repeats correct on every output
    has_score = np.zeros(k, dtype=bool)
    for i, r in enumerate(recs):
        for m, o in r.outputs.items():
            j = col[m]
            cell = len(ri)
            ri.append(i)
            ci.append(j)
            q.append(o.quality)
            c.append(o.cost)
            lat.append(o.latency_ms)
            tin.append(o.tokens_in)
            tout.append(o.tokens_out)
            ans.append(o.answer)
            if o.samples is not None:
                smp.append((i, j, o.samples))
            for name, v in o.signals.items():
                cells, vals = sig.setdefault(name, ([], []))
                cells.append(cell)
                vals.append(v)
            if "score" in o.signals:
                has_score[j] = True
                grade_like[j] &= o.score_is_grade

    rows = np.array(ri, dtype=np.intp)
    cols_ = np.array(ci, dtype=np.intp)

    def fill(values: list[float], default: float) -> np.ndarray:
        out = np.full((n, k), default)
        out[rows, cols_] = values
        return out

    present = np.zeros((n, k), dtype=bool)
    present[rows, cols_] = True
    quality = fill(q, 0.0)
    cost = fill(c, 0.0)
    latency = fill(lat, np.nan)
    t_in = fill(tin, np.nan)
    t_out = fill(tout, np.nan)
    answers = np.full((n, k), None, dtype=object)
    flat = np.empty(len(ans), dtype=object)
    flat[:] = ans
    answers[rows, cols_] = flat
    signals: dict[str, np.ndarray] = {}
    for name, (cells, vals) in sig.items():
        arr = np.full((n, k), np.nan)
        at = np.array(cells, dtype=np.intp)
        arr[rows[at], cols_[at]] = vals
        signals[name] = arr
    has_samples = bool(smp)
    samples = np.full((n, k), None, dtype=object)
    for i, j, s in smp:
        samples[i, j] = s

    notes: list[str] = []
    if "score" in signals and (grade_like | ~has_score).all():
        del signals["score"]
        notes.append(
            "'score' equals 'correct' on every output: it is the grade, not a confidence, "
            "so it is not offered as a signal"
        )
    if has_samples:
        vote = np.full((n, k), np.nan)
        vote[[t[0] for t in smp], [t[1] for t in smp]] = vote_share([t[2] for t in smp])
        signals["vote"] = vote

    # Models cheapest first; the mean is over the queries each model answered.
    counts = present.sum(axis=0)
    mean_cost = (cost * present).sum(axis=0) / np.maximum(counts, 1)
    order = np.array(sorted(range(k), key=lambda j: (mean_cost[j], j)), dtype=np.intp)
    names = [names[j] for j in order]
    mean_cost = mean_cost[order]

    def cols(a: np.ndarray) -> np.ndarray:
        return a[:, order]

    present, quality, cost = cols(present), cols(quality), cols(cost)
    missing = ~present
    if missing.any():
        cost = np.where(missing, mean_cost[None, :], cost)
        quality[missing] = 0.0
    if got.merged:
        notes.append(f"{got.merged} queries were recorded over two lines and merged")
    return ReplayLog(
        ids=[r.id for r in recs],
        models=names,
        present=present,
        quality=quality,
        cost=cost,
        latency_ms=cols(latency),
        answers=cols(answers),
        signals={s: cols(v) for s, v in sorted(signals.items())},
        tokens_in=None if np.isnan(t_in).all() else cols(t_in),
        tokens_out=None if np.isnan(t_out).all() else cols(t_out),
        samples=cols(samples) if has_samples else None,
        tasks=[r.task for r in recs],
        inputs=[r.input for r in recs],
        references=[r.reference for r in recs],
        path=str(path),
        merged_duplicates=got.merged,
        notes=notes,
    )


def default_reject_path(path: str | Path) -> Path:
    """Where rejects of ``path`` go by default: ``<stem>.rejects.jsonl`` in the working folder.

    Not next to the log: logs often sit in read-only data folders.
    """
    return Path.cwd() / f"{Path(path).stem}.rejects.jsonl"


def load_replay(
    path: str | Path, *, skip_bad: bool = False, reject_path: str | Path | None = None
) -> ReplayLog:
    """Load a replay log (JSONL) into a validated :class:`ReplayLog`.

    A bad line raises :class:`DataError` naming file, line and field. With
    ``skip_bad=True`` bad lines are written to ``reject_path`` (default
    :func:`default_reject_path`) as JSONL ``{line, field, reason, raw}`` and counted in
    ``ReplayLog.skipped``; the reject file is only written when something was rejected.
    """
    p = Path(path)
    got = _collect(p, skip_bad)
    if got.rejects:
        out = Path(reject_path) if reject_path is not None else default_reject_path(p)
        _write_rejects(got.rejects, out)
    if not got.records:
        why = f"all {len(got.rejects)} lines were bad" if got.rejects else "it holds no records"
        raise DataError(f"no usable queries: {why}", path=p)
    log = _build(p, got)
    if got.rejects:
        log.skipped = len(got.rejects)
        log.reject_path = str(out)
    return log


__all__ = ["default_reject_path", "load_replay"]
