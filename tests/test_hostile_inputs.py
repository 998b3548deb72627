"""Hostile and careless files: each one a clean error naming file, line and field.

One test per problem found by hand or by the fuzzers (``tests/test_fuzz_loaders.py``):
bytes that are not UTF-8, JSON or YAML nested 100,000 deep, numbers of hundreds of
digits, YAML aliases that expand to billions of values, names of a million characters,
values that look valid but are not (an empty model name, ``logprob: Infinity``,
``correct: 1``, a key given twice), and the command line's last resort for a bug.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests._fuzz import CASCADE, GATEWAY, RUN_CONFIG, replay_records
from tests._fuzz_cli import run_cli
from tiered.config.run import load_run_config
from tiered.core.limits import MAX_NAME_CHARS
from tiered.core.spec import CascadeSpec
from tiered.errors import ConfigError, DataError
from tiered.io.sources import FieldMap, open_source
from tiered.replay.load import load_replay
from tiered.serve.config import load_gateway_config


def _log(tmp_path: Path, lines: list[Any], name: str = "log.jsonl") -> Path:
    path = tmp_path / name
    text = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
    path.write_bytes(text)
    return path


def _record(**output: Any) -> dict[str, Any]:
    rec = replay_records(1)[0]
    rec["outputs"]["small"].update(output)
    return rec


# --------------------------------------------------------------------------- replay logs


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"id": "\xff"}', r"log\.jsonl:2: not valid UTF-8 \(byte 9 of the line\)"),
        (b"[" * 100_000 + b"]" * 100_000, r"log\.jsonl:2: nested deeper than 64 levels"),
        (b'{"id": "a", "x": ' + b"[" * 200 + b"]" * 200 + b"}", "nested deeper than 64"),
        (b'{"id": ' + b"9" * 5000 + b"}", "a number of more than 4,300 digits"),
        (b'{"id": "a", "id": "b", "outputs": {}}', "key 'id' appears twice in one object"),
        (b"x" * 10, r"log\.jsonl:2: not valid JSON"),
    ],
)
def test_a_broken_line_is_a_located_error(tmp_path: Path, line: bytes, message: str) -> None:
    path = _log(tmp_path, [replay_records(1)[0], line])
    with pytest.raises(DataError, match=message) as info:
        load_replay(path)
    assert info.value.line == 2 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("output", "field", "message"),
    [
        ({"logprob": float("inf")}, "outputs.small.logprob", "must be <= 0"),
        ({"logprob": 0.5}, "outputs.small.logprob", r"must be <= 0 \(a log-probability\)"),
        ({"margin": float("inf")}, "outputs.small.margin", "must be finite or -Infinity"),
        ({"correct": 1}, "outputs.small.correct", "must be true or false. Got 1 instead"),
        ({"correct": 0}, "outputs.small.correct", "must be true or false. Got 0 instead"),
        ({"tokens_in": 10**400}, "outputs.small.tokens_in", r"at most 1e\+15 or null\. Got 1000"),
        ({"margin": 10**400}, "outputs.small.margin", "is too large a number"),
        # two of these would add up to an infinite mean cost
        ({"cost": 1e308}, "outputs.small.cost", r"must be a number at most 1e\+15"),
    ],
)
def test_values_that_look_valid_but_are_not_are_refused(
    tmp_path: Path, output: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_replay(_log(tmp_path, [_record(**output)]))
    assert info.value.field == field and info.value.line == 1


def test_minus_infinity_stays_a_valid_log_prob(tmp_path: Path) -> None:
    # real logs hold it (a log-prob that underflowed): the least confident value
    log = load_replay(_log(tmp_path, [_record(logprob=float("-inf"))]))
    assert log.signals["logprob"][0, log.model_index("small")] == float("-inf")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("", "a model name must not be empty"),
        (" ", "a model name must not be empty"),
        ("m" * (MAX_NAME_CHARS + 1), "a model name must be at most 256 characters"),
        ("gpt\n4", "a model name must not contain control characters"),
        ("\x1b[2Jgpt", "must not contain control characters"),
    ],
)
def test_bad_model_names_are_refused(tmp_path: Path, model: str, message: str) -> None:
    rec = replay_records(1)[0]
    rec["outputs"][model] = rec["outputs"].pop("small")
    with pytest.raises(DataError, match=message) as info:
        load_replay(_log(tmp_path, [rec]))
    assert info.value.field == "outputs"


def test_a_repeated_model_in_one_object_and_long_ids_and_tasks_are_refused(
    tmp_path: Path,
) -> None:
    out = b'{"correct": true, "cost": 1}'
    twice = b'{"id": "a", "outputs": {"m": ' + out + b', "m": ' + out + b"}}"
    with pytest.raises(DataError, match="key 'm' appears twice"):
        load_replay(_log(tmp_path, [twice]))
    rec = replay_records(1)[0]
    with pytest.raises(DataError, match="at most 4,096 characters") as info:
        load_replay(_log(tmp_path, [{**rec, "id": "i" * 5000}]))
    assert info.value.field == "id"
    with pytest.raises(DataError, match="a task name must be at most 256") as info:
        load_replay(_log(tmp_path, [{**rec, "task": "t" * 100_000}]))
    assert info.value.field == "task"


def test_skip_bad_puts_undecodable_and_deep_lines_in_the_reject_file(tmp_path: Path) -> None:
    good = replay_records(2)
    path = _log(tmp_path, [good[0], b'{"id": "\xff\xfe"}', b"[" * 5000, good[1]])
    rejects = tmp_path / "rejects.jsonl"
    log = load_replay(path, skip_bad=True, reject_path=rejects)
    assert log.ids == ["q0", "q1"] and log.skipped == 2
    reasons = [json.loads(x)["reason"] for x in rejects.read_text().splitlines()]
    assert "not valid UTF-8" in reasons[0] and "nested deeper" in reasons[1]


def test_a_byte_order_mark_is_not_a_bad_first_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(replay_records(1)[0]).encode() + b"\n")
    assert load_replay(path).ids == ["q0"]


# --------------------------------------------------------------------------- YAML files


def _yaml(tmp_path: Path, text: str | bytes, name: str = "cascade.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _laughs(levels: int = 9) -> str:
    lines = ["  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "name: c\nmetadata:\n" + "\n".join(lines) + "\nstages: [{name: s, model: {kind: x}}]\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (b"name: c\nstages: \xff\n", 2, r"not valid UTF-8 \(byte 0xff\)"),
        ("name: c\nstages: \x00\n", 2, r"character '\\x00' is not allowed"),
        ("a: " + "[" * 100_000 + "]" * 100_000, 1, "nested deeper than 64 levels"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(100)), 65, "deeper than 64 levels"),
        (_laughs(), None, r"over 200,000 values \(each use of an alias counted\)"),
        ("name: c\nmetadata: &a {x: *a}\n", 2, "an alias refers to a value that contains it"),
        ("? [a, b]\n: c\n", 1, "found unhashable key"),
        (
            "name: !!python/object/apply:os.system ['true']\n",
            1,
            "could not determine a constructor",
        ),
    ],
)
def test_a_hostile_yaml_file_is_a_located_error(
    tmp_path: Path, text: str | bytes, line: int | None, message: str
) -> None:
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        CascadeSpec.load(path)
    assert info.value.path == str(path) and "\n" not in str(info.value)
    if line is not None:
        assert info.value.line == line


def test_a_config_file_over_8_mib_is_refused_unread(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "# " + "x" * (8 * 2**20) + "\nname: c\n")
    with pytest.raises(ConfigError, match="larger than 8 MiB"):
        CascadeSpec.load(path)


def test_a_million_character_cascade_name_is_refused_at_once(tmp_path: Path) -> None:
    spec = {**CASCADE, "name": "n" * 1_000_000}
    with pytest.raises(
        ConfigError, match=r"at most 256 characters\. Got 1,000,000 instead"
    ) as info:
        CascadeSpec.load(_yaml(tmp_path, yaml.safe_dump(spec, sort_keys=False)))
    assert info.value.field == "name" and info.value.line == 1
    assert len(str(info.value)) < 300  # the value itself is not repeated back


def test_a_long_stage_name_in_a_run_config_is_refused(tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["cheap"][0]["name"] = "s" * 100_000
    path = _yaml(tmp_path, yaml.safe_dump(cfg), "run.yaml")
    with pytest.raises(ConfigError, match="at most 256 characters") as info:
        load_run_config(path)
    assert info.value.field == "cheap.0.name" and info.value.line is not None


def test_a_cost_that_is_a_list_is_a_located_error(tmp_path: Path) -> None:
    spec = json.loads(json.dumps(CASCADE))
    spec["stages"][0]["cost"] = [1, 2]
    with pytest.raises(ConfigError, match="must be a mapping with a 'kind'") as info:
        CascadeSpec.load(_yaml(tmp_path, yaml.safe_dump(spec)))
    assert info.value.field == "stages.0.cost"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda g: g["cascades"][0].__setitem__("name", "n" * 1_000_000), "cascades.0.name"),
        (lambda g: g["budgets"]["per_key"].__setitem__("k" * 300, 1.0), "budgets.per_key"),
        (lambda g: g["cascades"][0].__setitem__("labels", ["ok", ""]), "cascades.0.labels.1"),
    ],
)
def test_gateway_names_have_limits(tmp_path: Path, edit: Any, field: str) -> None:
    gw = json.loads(json.dumps(GATEWAY))
    edit(gw)
    path = _yaml(tmp_path, yaml.safe_dump(gw), "gateway.yaml")
    with pytest.raises(ConfigError) as info:
        load_gateway_config([path])
    assert info.value.field is not None and info.value.field.startswith(field)
    assert info.value.path == str(path)


def test_a_keys_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    from tiered.serve.auth import KeyRing
    from tiered.serve.config import AuthSettings

    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"alice: sk-\xff\xfe-secret\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as info:
        KeyRing.from_settings(AuthSettings(keys_file=str(keys)))
    assert "secret" not in str(info.value)
    keys.write_text("a\x1bname: sk-fine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="control characters"):
        KeyRing.from_settings(AuthSettings(keys_file=str(keys)))


# --------------------------------------------------------------------------- input sources


def _drain(path: Path) -> tuple[list[str], list[str]]:
    src = open_source(path, FieldMap(text_field="text", id_field="id"))
    batches = list(src.batches(batch_size=2))
    return [i.id for b in batches for i in b.items], [r.reason for b in batches for r in b.rejects]


def test_a_deep_or_huge_number_jsonl_record_is_rejected_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    path = _log(
        tmp_path,
        [
            {"id": "a", "text": "x"},
            b"[" * 100_000,
            b'{"id": ' + b"9" * 5000 + b"}",
            {"id": "b", "text": "y"},
        ],
        "in.jsonl",
    )
    ids, reasons = _drain(path)
    assert ids == ["a", "b"]
    assert "nested too deeply" in reasons[0] and "4,300 digits" in reasons[1]
    assert all("in.jsonl:" in r for r in reasons)


def test_a_csv_header_that_is_not_utf8_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,te\xffxt\na,hello\n")
    with pytest.raises(DataError, match=r"in\.csv:1: not valid UTF-8"):
        _drain(path)


def test_a_corrupt_parquet_file_is_one_located_line(tmp_path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["hello", "world"]}), buf)
    data = bytearray(buf.getvalue())
    path = tmp_path / "in.parquet"
    for at in (4, 40, len(data) // 2):  # header, a data page, the middle
        broken = bytearray(data)
        broken[at : at + 8] = b"\xff" * 8
        path.write_bytes(bytes(broken))
        try:
            _drain(path)
        except DataError as exc:
            assert "in.parquet" in str(exc) and "\n" not in str(exc)


# --------------------------------------------------------------------------- the command line


def test_names_that_look_like_markup_are_printed_not_parsed(tmp_path: Path) -> None:
    rec = replay_records(1)[0]
    rec["task"] = "[/x]"
    rec["outputs"]["[/]"] = rec["outputs"].pop("small")
    code, err = run_cli(["inspect", str(_log(tmp_path, [rec]))])
    assert code == 0, err


def test_a_bug_ends_in_one_line_asking_for_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiered.replay.load

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("something tiered did not expect")

    monkeypatch.setattr(tiered.replay.load, "load_replay", boom)
    code, err = run_cli(["inspect", "log.jsonl"])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "internal error (RuntimeError: something tiered did not expect)" in err
    assert "please report it" in err and "TIERED_DEBUG=1" in err
    monkeypatch.setenv("TIERED_DEBUG", "1")
    with pytest.raises(RuntimeError, match="did not expect"):
        run_cli(["inspect", "log.jsonl"])


def test_an_os_error_is_one_line_naming_the_path(tmp_path: Path) -> None:
    log = _log(tmp_path, replay_records(6))
    blocker = tmp_path / "file"
    blocker.write_text("a regular file", encoding="utf-8")
    code, err = run_cli(["calibrate", str(log), "-o", str(blocker / "c.yaml"), "--folds", "0"])
    assert code == 2, err
    assert err.startswith("error:") and str(blocker) in err and len(err.strip().splitlines()) == 1


def test_serve_check_builds_the_gateway_and_exits(tmp_path: Path) -> None:
    path = _yaml(tmp_path, yaml.safe_dump(GATEWAY), "gateway.yaml")
    assert run_cli(["serve", "--check", str(path)]) == (0, "ok: 1 cascade(s) built (bot)\n")
    bad = json.loads(json.dumps(GATEWAY))
    bad["cascades"][0]["stages"][0]["model"]["kind"] = "nope\nkind"
    code, err = run_cli(["serve", "--check", str(_yaml(tmp_path, yaml.safe_dump(bad), "b.yaml"))])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "b.yaml" in err and "unknown model kind 'nope\\nkind'" in err


def test_a_cascade_of_thousands_of_stages_is_refused(tmp_path: Path) -> None:
    stage = {"name": "s", "model": {"kind": "replay", "model": "small"}}
    spec = {"name": "c", "stages": [{**stage, "name": f"s{i}"} for i in range(5000)]}
    with pytest.raises(ConfigError, match="at most 64 items") as info:
        CascadeSpec.load(_yaml(tmp_path, yaml.safe_dump(spec)))
    assert info.value.field == "stages"


def test_inspect_of_a_cascade_names_the_file_or_the_signal_it_lacks(tmp_path: Path) -> None:
    log = _log(tmp_path, replay_records(6))
    spec = json.loads(json.dumps(CASCADE))
    spec["stages"][0]["model"]["mode"] = "small"  # not a key of a replay model
    code, err = run_cli(["inspect", str(_yaml(tmp_path, yaml.safe_dump(spec))), str(log)])
    assert code == 2 and "cascade.yaml" in err and "unknown key(s) ['mode']" in err
    spec = json.loads(json.dumps(CASCADE))
    spec["stages"][0]["rule"]["signal"] = "lprob"
    code, err = run_cli(["inspect", str(_yaml(tmp_path, yaml.safe_dump(spec))), str(log)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs signal 'lprob'" in err and "log.jsonl" in err


def test_yaml_keys_with_newlines_and_negative_seeds_are_one_line_errors(tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["online"]["\t\n"] = 1.0
    with pytest.raises(ConfigError, match=r"field 'online\.\\t\\n': Extra inputs") as info:
        load_run_config(_yaml(tmp_path, yaml.safe_dump(cfg), "run.yaml"))
    assert "\n" not in str(info.value)
    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["seed"] = -3
    with pytest.raises(ConfigError, match="greater than or equal to 0") as info:
        load_run_config(_yaml(tmp_path, yaml.safe_dump(cfg), "run.yaml"))
    assert info.value.field == "seed"


def test_a_csv_header_over_several_lines_and_a_bad_parquet_schema_are_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b'"id,label\r\nr0,text,a\r\n')  # an open quote swallows the file
    with pytest.raises(DataError, match="column not in the CSV header") as info:
        _drain(path)
    assert "\n" not in str(info.value)
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["a"], "text": ["hello"]}), buf)
    broken = buf.getvalue().replace(b"text", b"t\xe4xt")  # a column name that is not UTF-8
    path = tmp_path / "in.parquet"
    path.write_bytes(broken)
    with pytest.raises(DataError, match=r"in\.parquet") as info:
        _drain(path)
    assert "\n" not in str(info.value)
