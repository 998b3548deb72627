"""Saved state as arrays + JSON: round trips, refusals, hostile blobs, schema versions."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered.core import FixedCost, Item, Stage
from tiered.errors import StoreError
from tiered.models.hashed_ngram import HashedNgramModel
from tiered.models.label_column import LabelColumn
from tiered.online import OnlineCascade, OnlineConfig
from tiered.store import Checkpoint, RunIdentity, RunStore, connect
from tiered.store.gateway_spend import SpendTable
from tiered.store.learner_state import LearnerStates
from tiered.store.response_cache import ResponseCache
from tiered.store.schema import ensure_schema
from tiered.store.state import (
    MAGIC,
    decode_state,
    encode_state,
    load_state_files,
    save_state_files,
)

from ._hostile import marker_npy, marker_pickle


def _tree() -> dict[str, Any]:
    return {
        "none": None,
        "flags": [True, False],
        "big": 2**127 + 5,  # a random generator's state
        "nan": math.nan,
        "inf": -math.inf,
        "text": "naïve \0 ünïcode",
        "$dollar": {"$a": 1, "$$b": 2, "$t": [3]},  # keys that look like the format's tags
        "tuple": (1, "two", (3.0, None)),
        "f64": np.linspace(0, 1, 7),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "bool": np.array([True, False, True]),
        "str": np.array(["up", "down"]),
        "bytes": np.array([b"ab", b"c"]),
        "zero_d": np.array(2.5),
        "empty": np.zeros((0, 4)),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalars": [np.float64(0.5), np.int64(7), np.bool_(True)],
        "csr": sp.random(5, 9, density=0.3, format="csr", random_state=0),
        "csc_array": sp.csc_array(np.eye(3)),
        "order": {"z": 1, "a": 2, "m": 3},
    }


def _same(a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif sp.issparse(a):
        assert type(a) is type(b) and a.shape == b.shape
        np.testing.assert_array_equal(a.toarray(), b.toarray())
    elif isinstance(a, dict):
        assert list(a) == list(b)  # order kept
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b and type(a) is type(b.item() if isinstance(b, np.generic) else b)


def test_every_supported_value_round_trips_exactly() -> None:
    tree = _tree()
    back = decode_state(encode_state(tree))
    scalars = back.pop("scalars")
    assert scalars == [0.5, 7, True] and [type(x) for x in scalars] == [float, int, bool]
    tree.pop("scalars")
    _same(tree, back)
    assert back["fortran"].flags.writeable  # arrays come back writable, not views of the blob
    back["f64"][0] = 9.0


def test_files_round_trip_and_name_their_arrays(tmp_path: Path) -> None:
    path = save_state_files(_tree(), tmp_path / "s.json", kind="test")
    assert (tmp_path / "s.npz").exists()
    doc = json.loads(path.read_text())
    assert doc["arrays"]["file"] == "s.npz" and doc["kind"] == "test"
    back = load_state_files(path, kind="test")
    tree = _tree()
    back.pop("scalars"), tree.pop("scalars")
    _same(tree, back)
    with pytest.raises(StoreError, match="not a tiered other file"):
        load_state_files(path, kind="other")


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": [1, {"b": object()}]}, r"state\['a'\]\[1\]\['b'\]: it is a builtins.object"),
        ({"a": np.array([None], dtype=object)}, r"state\['a'\]: it is a numpy array of dtype"),
        ({"a": {1: "x"}}, r"state\['a'\]\[1\]: it is a dict key of type int"),
        ({"a": np.zeros(2, dtype="i4,f8")}, "numpy array of dtype"),
        ({"a": {1.5}}, "builtins.set"),
    ],
)
def test_unsupported_values_are_refused_with_their_path(value: Any, where: str) -> None:
    with pytest.raises(StoreError, match=where):
        encode_state(value)


def test_a_cycle_is_refused_not_endless() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(StoreError, match="nested more than"):
        encode_state({"x": loop})


def test_any_truncation_or_flipped_bit_is_a_store_error() -> None:
    blob = encode_state({"w": np.arange(50.0), "names": ["a", "b"], "m": sp.eye(4, format="csr")})
    for n in range(0, len(blob), 7):
        with pytest.raises(StoreError):
            decode_state(blob[:n])
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x10
        with pytest.raises(StoreError):
            decode_state(bytes(bad))


def _forge(doc: bytes, data: bytes = b"") -> bytes:
    """A blob with a valid header and checksum around an attacker's JSON and data."""
    body = doc + data
    head = struct.pack("<8sIIQQ", MAGIC, 1, zlib.crc32(body), len(doc), len(data))
    return head + body


@pytest.mark.parametrize(
    "doc",
    [
        b'{"$a": ["|O8", [1], 0]}',  # an object array
        b'{"$a": ["<f8", [1000], 0]}',  # more data than there is
        b'{"$a": ["<f8", [-1], 0]}',
        b'{"$a": ["<f8", [2], -8]}',
        b'{"$a": ["V8", [1], 0]}',
        b'{"$a": [1, 2]}',
        b'{"$x": 1}',  # an unknown tag
        b'{"$t": 5}',
        b'{"$sp": {"format": "coo"}}',
        b'{"$sp": {"format": "csr", "shape": [2, 2], "data": {"$a": ["<f8", [1], 0]}, '
        b'"indices": {"$a": ["<i4", [1], 8]}, "indptr": {"$a": ["<i4", [3], 16]}}}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser should go
        b"\xff\xfe not json",
    ],
)
def test_forged_blobs_with_a_valid_checksum_are_store_errors(doc: bytes) -> None:
    data = np.array([1.0], dtype="<f8").tobytes()
    data += np.array([7, 0], dtype="<i4").tobytes()  # a column index out of range
    data += np.array([0, 1, 1], dtype="<i4").tobytes() + b"\0" * 4
    with pytest.raises(StoreError):
        decode_state(_forge(doc, data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_a_store_error(junk: bytes) -> None:
    for blob in (junk, MAGIC + junk, _forge(junk)):
        with contextlib.suppress(StoreError):
            decode_state(blob)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_plain_tree_round_trips(tree: Any) -> None:
    assert decode_state(encode_state(tree)) == tree


# ----------------------------------------------------------- pickles never run


def test_a_pickle_in_place_of_a_state_blob_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(StoreError, match="a pickle"):
        decode_state(marker_pickle(marker))
    assert not marker.exists()


def test_a_pickle_in_a_run_store_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = RunStore(tmp_path / "run.sqlite")
    store.start(RunIdentity("h", "in", "out"))
    store.commit(Checkpoint(learner={"w": np.arange(3.0), "names": ("a", "b")}))
    got = store.latest()
    assert got is not None and got.learner["names"] == ("a", "b")
    np.testing.assert_array_equal(got.learner["w"], np.arange(3.0))
    store.conn.execute("UPDATE run_checkpoint SET learner = ?", (marker_pickle(marker),))
    with pytest.raises(StoreError, match=r"run\.sqlite.*pass --fresh"):
        store.latest()
    store.close()
    assert not marker.exists()


def test_a_pickle_or_object_array_in_place_of_state_files_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "s.json"
    path.write_bytes(marker_pickle(marker))
    with pytest.raises(StoreError, match=r"s\.json is not a tiered test file: .*pickle or joblib"):
        load_state_files(path, kind="test")
    # a forged pair: the JSON names an .npz holding a pickled object array, SHA-256 and all
    save_state_files({"w": np.arange(2.0)}, path, kind="test")
    npz = tmp_path / "s.npz"
    import zipfile

    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("a0.npy", marker_npy(marker))
    import hashlib

    doc = json.loads(path.read_text())
    doc["arrays"]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"s\.json is not a valid saved state"):
        load_state_files(path, kind="test")
    assert not marker.exists()


def test_state_files_refuse_a_foreign_npz(tmp_path: Path) -> None:
    path = save_state_files({"w": np.arange(2.0)}, tmp_path / "s.json", kind="test")
    np.savez(tmp_path / "s.npz", a0=np.arange(3.0))
    with pytest.raises(StoreError, match=r"s\.npz does not belong to .*s\.json"):
        load_state_files(path, kind="test")
    doc = json.loads(path.read_text())
    doc["arrays"]["file"] = "../elsewhere.npz"
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="same folder"):
        load_state_files(path, kind="test")


# ------------------------------------------------------------ schema versions


def _versions(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT component, version FROM store_schema").fetchall())


def test_learner_states_round_trip_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    conn = connect(tmp_path / "gw.sqlite")
    states = LearnerStates(conn)
    states.save("c", config_hash="h", n_items=3, blob=encode_state({"w": np.ones(2)}))
    saved = states.load("c")
    assert saved is not None and saved.n_items == 3 and saved.config_hash == "h"
    np.testing.assert_array_equal(saved.state["w"], np.ones(2))
    assert states.load("other") is None
    conn.execute("UPDATE store_schema SET version = 9 WHERE component = 'learner_state'")
    with pytest.raises(StoreError, match="written by a newer tiered"):
        LearnerStates(conn)


def _legacy_online_table(conn: sqlite3.Connection, blob: bytes | None) -> None:
    conn.execute(
        "CREATE TABLE gateway_online (cascade TEXT PRIMARY KEY, config_hash TEXT NOT NULL, "
        "n_items INTEGER NOT NULL, state BLOB NOT NULL, updated_at REAL NOT NULL)"
    )
    if blob is not None:
        conn.execute("INSERT INTO gateway_online VALUES ('c', 'h', 5, ?, 0.0)", (blob,))


def test_an_empty_pickled_online_table_is_migrated(tmp_path: Path) -> None:
    conn = connect(tmp_path / "gw.sqlite")
    _legacy_online_table(conn, None)
    LearnerStates(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "gateway_online" not in tables and "learner_state" in tables
    assert _versions(conn)["learner_state"] == 1


def test_pickled_online_state_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    conn = connect(tmp_path / "gw.sqlite")
    _legacy_online_table(conn, zlib.compress(marker_pickle(marker)))
    with pytest.raises(StoreError, match=r"saved by an older tiered as pickles.*gateway_online"):
        LearnerStates(conn)
    assert not marker.exists()
    # refused as a whole: nothing was half-migrated
    assert conn.execute("SELECT COUNT(*) FROM gateway_online").fetchone()[0] == 1
    assert not any(r[0] == "learner_state" for r in conn.execute("SELECT name FROM sqlite_master"))
    # a pickle written into the new table is not loaded either
    conn.execute("DELETE FROM gateway_online")
    states = LearnerStates(conn)
    conn.execute("INSERT INTO learner_state VALUES ('c', 'h', 5, ?, 0.0)", (marker_pickle(marker),))
    with pytest.raises(StoreError, match=r"learned state of 'c'.*a pickle"):
        states.load("c")
    assert not marker.exists()


def test_gateway_spend_from_before_versions_is_kept(tmp_path: Path) -> None:
    conn = connect(tmp_path / "gw.sqlite")
    conn.execute(
        "CREATE TABLE gateway_spend (key TEXT PRIMARY KEY, spent_usd REAL NOT NULL, "
        "updated_at REAL NOT NULL)"
    )
    conn.execute("INSERT INTO gateway_spend VALUES ('alice', 0.25, 0.0)")
    table = SpendTable(conn)
    assert table.totals() == {"alice": 0.25}
    table.add("alice", 0.5)
    table.add("bob", 0.125)
    assert SpendTable(conn).totals() == {"alice": 0.75, "bob": 0.125}
    assert _versions(conn)["gateway_spend"] == 1
    conn.execute("UPDATE store_schema SET version = 2 WHERE component = 'gateway_spend'")
    with pytest.raises(StoreError, match=r"gateway_spend tables were written by a newer"):
        SpendTable(conn)


def test_a_response_cache_from_before_versions_is_kept(tmp_path: Path) -> None:
    conn = connect(tmp_path / "cache.sqlite")
    conn.execute(
        "CREATE TABLE llm_cache (key TEXT PRIMARY KEY, base_url TEXT NOT NULL, model TEXT NOT "
        "NULL, request TEXT NOT NULL, response TEXT NOT NULL, tokens_in INTEGER, tokens_out "
        "INTEGER, usd REAL NOT NULL, latency_ms REAL NOT NULL, created_at REAL NOT NULL)"
    )
    conn.execute(
        "INSERT INTO llm_cache VALUES ('k', 'u', 'm', '{}', '{\"a\": 1}', 1, 2, 0.5, 3.0, 0.0)"
    )
    cache = ResponseCache(conn)
    hit = cache.get("k")
    assert hit is not None and hit.response == {"a": 1} and hit.usd == 0.5
    assert _versions(conn)["response_cache"] == 1


def test_a_refused_migration_changes_nothing(tmp_path: Path) -> None:
    conn = connect(tmp_path / "s.sqlite")
    conn.execute("CREATE TABLE old_thing (x INTEGER)")

    def refuse(c: sqlite3.Connection) -> None:
        c.execute("DROP TABLE old_thing")
        raise StoreError("no way")

    create = ("CREATE TABLE IF NOT EXISTS new_thing (x INTEGER)",)
    with pytest.raises(StoreError, match="no way"):
        ensure_schema(conn, "thing", 1, create, legacy_table="old_thing", migrations={0: refuse})
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "old_thing" in names and "new_thing" not in names
    with pytest.raises(StoreError, match="schema 0, which this tiered cannot migrate to 2"):
        ensure_schema(conn, "thing", 2, create, legacy_table="old_thing", migrations={1: refuse})


# ----------------------------------------------- an online cascade's checkpoint


def _texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    words = {"up": ["gains", "rises", "climbs"], "down": ["falls", "drops", "slips"]}
    out = []
    for _ in range(n):
        label = str(rng.choice(["up", "down"]))
        text = f"gold {rng.choice(words[label])} {rng.choice(['today', 'again', 'early'])}"
        out.append((text, label))
    return out


def _items(rows: list[tuple[str, str]], start: int = 0) -> list[Item]:
    return [Item(id=str(start + i), input=t, fields={"label": y}) for i, (t, y) in enumerate(rows)]


def _cascade() -> OnlineCascade:
    cheap = Stage("hashed", HashedNgramModel(n_features=2**14))
    expert = Stage("expert", LabelColumn("label"), cost=FixedCost(usd_per_call=0.01))
    cfg = OnlineConfig(target_agreement=0.9, warmup=40, batch_size=32, refit_every=16)
    return OnlineCascade([cheap], expert, cfg, seed=1)


def test_a_hashed_ngram_cascade_resumed_from_its_blob_decides_exactly_as_before() -> None:
    rows = _texts(900, seed=3)
    a = _cascade()
    for i in range(0, 500, 32):
        a.process(_items(rows[i : min(i + 32, 500)], i))
    blob = encode_state(a.state_dict())
    b = _cascade()
    b.load_state_dict(decode_state(blob))
    # each process sees its own copies of the items, as after a restart
    out_a = [d for i in range(500, 900, 32) for d in a.process(_items(rows[i : i + 32], i))]
    out_b = [d for i in range(500, 900, 32) for d in b.process(_items(rows[i : i + 32], i))]
    assert out_a == out_b
    assert repr(a.stats()) == repr(b.stats())
    assert sum(d.stage == "hashed" for d in out_a) > 100


def test_the_controllers_alarm_survives_a_checkpoint() -> None:
    oc = _cascade()
    c = oc.controller
    c.escalated, c.alarms, c.first_alarm_at = True, 2, 120
    again = _cascade()
    again.load_state_dict(decode_state(encode_state(oc.state_dict())))
    got = again.controller
    assert (got.escalated, got.alarms, got.first_alarm_at) == (True, 2, 120)
