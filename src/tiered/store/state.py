"""Saved state as arrays + JSON: loading a store or state file never runs code.

A *state* is a tree of ``None``, ``bool``, ``int``, ``float``, ``str``, lists, tuples, dicts
with ``str`` keys, numpy arrays (bools, numbers, fixed-width strings: never objects) and
scipy CSR/CSC matrices. Numpy scalars are saved as Python numbers. Anything else is
refused when saving, with the path of the offending value.

Two containers hold the same tree:

- :func:`encode_state` / :func:`decode_state`: one ``bytes`` object (a store's BLOB).
  Layout, little-endian::

      8 bytes  magic b"TIEREDST"
      u32      format version
      u32      CRC-32 of everything after this header
      u64      length of the JSON document
      u64      length of the array data
      ...      the JSON tree (UTF-8), then the arrays' raw bytes (8-byte aligned)

- :func:`save_state_files` / :func:`load_state_files`: a JSON file and an ``.npz`` next
  to it (read with ``allow_pickle=False``), bound together by the ``.npz``'s SHA-256.

In the JSON, a value that is not a JSON value is an object with one ``$`` key: ``{"$a":
...}`` an array (its dtype, shape and offset in the blob; its index in the ``.npz``),
``{"$t": [...]}`` a tuple, ``{"$sp": {...}}`` a sparse matrix; a
dict key that begins with ``$`` is written with one more ``$``. Decoding reads the JSON
with :mod:`json` and the arrays with ``np.frombuffer`` (or ``np.load(allow_pickle=False)``);
a truncated, garbled or foreign blob is a :class:`~tiered.errors.StoreError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tiered.errors import StoreError

MAGIC = b"TIEREDST"
FORMAT_VERSION = 1
FILE_FORMAT = "tiered-state"
MAX_DEPTH = 64  # deeper trees are refused (no state needs them; a cycle would be endless)
_HEADER = struct.Struct("<8sIIQQ")
_DTYPE = re.compile(r"[<>|=][biufcUS][0-9]{1,6}")  # plain dtypes only: no objects, no records
_DTYPES: dict[str, np.dtype[Any]] = {}  # validated dtype strings
_SCALARS = (str, int, float, bool, type(None))
_TAGS = frozenset({"$a", "$t", "$sp"})
_SPARSE = {"csr": sp.csr_matrix, "csc": sp.csc_matrix}
_SPARSE_ARRAYS = {"csr": sp.csr_array, "csc": sp.csc_array}


class _Unsupported(Exception):
    """A value the format cannot hold; ``path`` grows as the error leaves the tree."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.path: list[str] = []


def _where(path: list[str]) -> str:
    steps = path[::-1]
    if len(steps) > 12:
        steps = [*steps[:6], "...", *steps[-6:]]
    return "state" + "".join(steps)


class _Flattener:
    """Turns a state tree into JSON values; each array goes to ``ref``, which returns
    what stands for it in the JSON (its index, or its place in the blob)."""

    def __init__(self, ref: Callable[[np.ndarray], Any]) -> None:
        self.ref = ref

    def array(self, a: np.ndarray) -> dict[str, Any]:
        if a.dtype.kind not in "biufcUS" or a.dtype.fields is not None:
            raise _Unsupported(f"a numpy array of dtype {a.dtype} (only bools, numbers, strings)")
        # not np.ascontiguousarray: it makes a 0-d array 1-d
        return {"$a": self.ref(a if a.flags.c_contiguous else a.copy(order="C"))}

    def walk(self, obj: Any, depth: int) -> Any:
        t = type(obj)
        if t in _SCALARS:
            return obj
        if depth > MAX_DEPTH:
            raise _Unsupported(f"nested more than {MAX_DEPTH} levels deep (a cycle?)")
        if t is list or t is tuple:
            out = obj if all(type(x) in _SCALARS for x in obj) else self._items(obj, depth)
            return {"$t": list(out)} if t is tuple else list(out)
        if t is dict:
            return self._dict(obj, depth)
        if isinstance(obj, np.ndarray):
            return self.array(obj)
        if isinstance(obj, np.generic):
            if obj.dtype.kind in "biuf":
                return obj.item()
            return self.array(np.asarray(obj))
        if sp.issparse(obj) and obj.format in _SPARSE:
            return {
                "$sp": {
                    "format": obj.format,
                    "array": not isinstance(obj, sp.spmatrix),
                    "shape": [int(n) for n in obj.shape],
                    "data": self.array(obj.data),
                    "indices": self.array(obj.indices),
                    "indptr": self.array(obj.indptr),
                }
            }
        raise _Unsupported(f"a {t.__module__}.{t.__qualname__}")

    def _items(self, seq: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        out = []
        for i, x in enumerate(seq):
            try:
                out.append(self.walk(x, depth + 1))
            except _Unsupported as exc:
                exc.path.append(f"[{i}]")
                raise
        return out

    def _dict(self, d: dict[Any, Any], depth: int) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if type(k) is not str:
                exc = _Unsupported(f"a dict key of type {type(k).__name__} (keys must be str)")
                exc.path.append(f"[{k!r}]")
                raise exc
            try:
                out["$" + k if k[:1] == "$" else k] = (
                    v if type(v) in _SCALARS else self.walk(v, depth + 1)
                )
            except _Unsupported as exc:
                exc.path.append(f"[{k!r}]")
                raise
        return out


def _flatten(obj: Any, ref: Callable[[np.ndarray], Any]) -> Any:
    try:
        return _Flattener(ref).walk(obj, 0)
    except _Unsupported as exc:
        raise StoreError(
            f"cannot save {_where(exc.path)}: it is {exc.what}; saved state holds only "
            "None, bool, int, float, str, lists, tuples, dicts with str keys, numpy arrays "
            "and scipy CSR/CSC matrices"
        ) from None


class _Unflattener:
    """``json.loads`` object hook: tags back to arrays, tuples and sparse matrices."""

    def __init__(self, array: Callable[[Any], np.ndarray], *, escapes: bool = True) -> None:
        self.array = array  # what stands for an array in the JSON -> the array (validated)
        self.escapes = escapes  # False: the JSON has no escaped key (saves a look per dict)

    def __call__(self, d: dict[str, Any]) -> Any:
        if len(d) == 1:
            ((k, v),) = d.items()
            if k[:1] == "$":
                if k in _TAGS:
                    return self._tagged(k, v)
                if k[:2] != "$$":
                    raise ValueError(f"an unknown tag {k[:20]!r}")
                return {k[1:]: v}
        if self.escapes and any(k[:1] == "$" for k in d):
            if any(k[:1] == "$" and k[:2] != "$$" for k in d):
                raise ValueError("an unknown $ tag")
            return {(k[1:] if k[:1] == "$" else k): v for k, v in d.items()}  # order kept
        return d

    def _tagged(self, tag: str, v: Any) -> Any:
        if tag == "$t":
            if type(v) is not list:
                raise ValueError("a tuple tag without a list")
            return tuple(v)
        if tag == "$a":
            return self.array(v)
        fmt = v.get("format") if type(v) is dict else None
        if fmt not in _SPARSE:
            raise ValueError("a sparse tag without format 'csr' or 'csc'")
        parts = [v.get(name) for name in ("data", "indices", "indptr")]
        if not all(isinstance(p, np.ndarray) and p.ndim == 1 for p in parts):
            raise ValueError("a sparse tag without its three 1-d arrays")
        shape = _shape(v.get("shape"))
        if len(shape) != 2:
            raise ValueError("a sparse tag whose shape is not 2-d")
        kind = _SPARSE_ARRAYS if v.get("array") is True else _SPARSE
        m = kind[fmt]((parts[0], parts[1], parts[2]), shape=shape)
        m.check_format(full_check=True)  # indices in range: sparse products trust them
        return m


def _shape(value: Any) -> tuple[int, ...]:
    if type(value) is list and len(value) == 1 and type(value[0]) is int and value[0] >= 0:
        return (value[0],)  # the common case, quickly
    if type(value) is not list or len(value) > 32 or any(type(n) is not int for n in value):
        raise ValueError("an array shape that is not a list of ints")
    if any(n < 0 for n in value):
        raise ValueError("an array shape with a negative size")
    return tuple(value)


def _dtype(value: Any) -> np.dtype[Any]:
    dtype = _DTYPES.get(value) if type(value) is str else None
    if dtype is None:
        if type(value) is not str or not _DTYPE.fullmatch(value):
            raise ValueError(f"an array dtype {value!r} that is not a plain number or string type")
        dtype = _DTYPES[value] = np.dtype(value)
    return dtype


def _index(v: Any, count: int) -> int:
    if type(v) is not int or not 0 <= v < count:
        raise ValueError(f"an array reference {v!r} outside the {count} arrays")
    return v


# ----------------------------------------------------------------------- one blob


def encode_state(obj: Any) -> bytes:
    """``obj`` (a state tree, see the module docstring) as one self-checking blob."""
    chunks: list[bytes] = []
    offset = 0

    def ref(a: np.ndarray) -> list[Any]:
        nonlocal offset
        raw = a.tobytes()
        pad = -len(raw) % 8
        chunks.append(raw + b"\0" * pad if pad else raw)
        at, offset = offset, offset + len(raw) + pad
        return [a.dtype.str, list(a.shape), at]

    tree = _flatten(obj, ref)
    doc = json.dumps(tree, separators=(",", ":")).encode("utf-8")
    crc = zlib.crc32(doc)
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, crc, len(doc), offset)
    return b"".join([header, doc, *chunks])  # one copy of the arrays' bytes


def decode_state(blob: bytes | bytearray | memoryview, *, what: str = "saved state") -> Any:
    """The tree :func:`encode_state` wrote. Never unpickles; a blob that is not intact
    (truncated, garbled, another format such as a pickle) is a :class:`StoreError`
    whose message begins with ``what``."""
    data = memoryview(blob).cast("B")
    if len(data) < _HEADER.size or bytes(data[:8]) != MAGIC:
        hint = " (a pickle, from an older tiered?)" if bytes(data[:1]) == b"\x80" else ""
        raise StoreError(f"{what} is not in tiered's state format{hint}; it is not loaded")
    _, version, crc, n_doc, n_data = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{what} has state format version {version}; this tiered reads {FORMAT_VERSION}"
        )
    body = data[_HEADER.size :]
    if len(body) != n_doc + n_data or zlib.crc32(body) != crc:
        raise StoreError(f"{what} is damaged (truncated or altered: its checksum fails)")
    arrays = body[n_doc:]

    def array(ref: Any) -> np.ndarray:
        if type(ref) is not list or len(ref) != 3:
            raise ValueError(f"a malformed array reference {ref!r}")
        dtype, shape, offset = _dtype(ref[0]), _shape(ref[1]), ref[2]
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if type(offset) is not int or offset < 0 or offset + nbytes > n_data:
            raise ValueError("an array outside the data")
        if nbytes == 0:
            return np.zeros(shape, dtype)
        flat = np.frombuffer(arrays, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape).copy()  # writable, and not pinning the blob

    try:
        doc = bytes(body[:n_doc])
        return json.loads(doc, object_hook=_Unflattener(array, escapes=b'"$$' in doc))
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise StoreError(f"{what} is not a valid saved state: {exc}") from None


def _resolve(tree: Any, hook: _Unflattener) -> Any:
    """Apply ``hook`` bottom-up to the dicts of a parsed JSON tree."""
    # writing the (small) tree again and parsing it with the hook is simpler than a walk
    return json.loads(json.dumps(tree), object_hook=hook)


def is_plain(obj: Any) -> bool:
    """Whether ``obj`` can be saved as state (see the module docstring)."""
    try:
        _Flattener(lambda a: 0).walk(obj, 0)
    except _Unsupported:
        return False
    return True


# ------------------------------------------------------------------ JSON + .npz


def save_state_files(obj: Any, path: str | Path, *, kind: str) -> Path:
    """Write ``obj`` as the JSON file ``path`` and its arrays as ``path`` with suffix
    ``.npz`` (same folder); ``kind`` names what the files hold (checked when loading)."""
    p = Path(path)
    npz = p.with_suffix(".npz")
    if npz == p:
        raise StoreError(f"{p}: the state's JSON file must not end in .npz")
    arrays: list[np.ndarray] = []

    def ref(a: np.ndarray) -> int:
        arrays.append(a)
        return len(arrays) - 1

    tree = _flatten(obj, ref)
    named: dict[str, Any] = {f"a{i}": a for i, a in enumerate(arrays)}
    with open(npz, "wb") as f:
        np.savez_compressed(f, **named)
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    doc = {
        "format": FILE_FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "arrays": {"file": npz.name, "sha256": digest, "count": len(arrays)},
        "tree": tree,
    }
    p.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    return p


def load_state_files(path: str | Path, *, kind: str) -> Any:
    """The tree :func:`save_state_files` wrote to ``path`` (a JSON file naming its .npz).

    Never unpickles: a file in any other format (a pickle or joblib file, say) or a
    pair that does not belong together is a :class:`StoreError` naming the file.
    """
    p = Path(path)
    try:
        head = p.read_bytes()
    except OSError as exc:
        raise StoreError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    what = f"{p} is not a tiered {kind} file"
    if head[:1] != b"{":
        pickled = head[:1] == b"\x80" or head[:2] in (b"x\x01", b"x\x9c", b"x\xda")
        hint = (
            ": it looks like a pickle or joblib file (from an older tiered?), which is not "
            "loaded because loading one can run code"
            if pickled
            else ""
        )
        raise StoreError(f"{what}{hint}")
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{what}: {exc}") from None
    if type(doc) is not dict or doc.get("format") != FILE_FORMAT or doc.get("kind") != kind:
        raise StoreError(what)
    if doc.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{p} has state format version {doc.get('version')!r}; "
            f"this tiered reads {FORMAT_VERSION}"
        )
    meta = doc.get("arrays")
    if type(meta) is not dict:
        raise StoreError(f"{p}: field 'arrays' must be an object")
    name = meta.get("file")
    if type(name) is not str or Path(name).name != name or not name.endswith(".npz"):
        raise StoreError(f"{p}: field 'arrays.file' must name an .npz file in the same folder")
    npz = p.parent / name
    try:
        raw = npz.read_bytes()
    except OSError as exc:
        raise StoreError(f"{npz}: cannot read the arrays of {p} ({exc.strerror or exc})") from None
    if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        raise StoreError(f"{npz} does not belong to {p} (its SHA-256 differs): save them again")
    count = meta.get("count")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as files:
            if type(count) is not int or sorted(files.files) != sorted(
                f"a{i}" for i in range(count)
            ):
                raise ValueError("the .npz does not hold the arrays the JSON names")

            def array(ref: Any) -> np.ndarray:
                a = files[f"a{_index(ref, count)}"]
                _dtype(a.dtype.str)
                return np.asarray(a)

            return _resolve(doc.get("tree"), _Unflattener(array))
    except (ValueError, KeyError, TypeError, OSError, RecursionError, zlib.error) as exc:
        raise StoreError(f"{p} is not a valid saved state: {exc}") from None


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "decode_state",
    "encode_state",
    "is_plain",
    "load_state_files",
    "save_state_files",
]
