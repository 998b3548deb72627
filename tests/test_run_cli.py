"""`tiered run` end to end: quick mode, config mode, outputs, errors, report, replay log."""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import pytest

from tiered.replay.load import load_replay
from tiered.store import RunStore

from ._cli import tiered

WORDS = {
    "pos": ["good", "great", "fine", "lovely", "superb"],
    "neg": ["bad", "awful", "poor", "grim", "sad"],
}
FILLER = ["the", "a", "movie", "plot", "actor", "scene", "story", "film"]


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Two classes told apart by their words; `label` is the expert's, `gold` the truth."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lab = rng.choice(sorted(WORDS))
        text = " ".join(rng.choice(FILLER + WORDS[lab]) for _ in range(8))
        rows.append({"id": f"r{i}", "text": text, "label": lab, "gold": lab})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]], bad_every: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r) + "\n")
            if bad_every and i % bad_every == bad_every - 1:
                f.write("{broken\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


QUICK = ["--text-field", "text", "--id-field", "id", "--expert-field", "label"]
QUICK += ["--expert-cost", "0.002", "--target-agreement", "0.96", "--no-progress"]


def test_quick_mode_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(1200)
    src = write_jsonl(tmp_path / "in.jsonl", rows, bad_every=500)
    out = tmp_path / "out.jsonl"
    report = tmp_path / "report.html"
    replay = tmp_path / "replay.jsonl"
    code, stdout, err = tiered(
        capsys, "run", str(src), "-o", str(out), *QUICK, "--label-field", "gold",
        "--report", str(report), "--replay-out", str(replay),
    )  # fmt: skip
    assert code == 0, err
    lines = read_jsonl(out)
    assert [x["id"] for x in lines] == [r["id"] for r in rows]  # every id once, in order
    assert {x["stage"] for x in lines} <= {"hashed_ngram", "expert"}
    expert = [x for x in lines if x["stage"] == "expert"]
    cheap = [x for x in lines if x["stage"] != "expert"]
    assert expert and cheap  # the cheap stage learned enough to answer some
    assert all(x["label"] == x["expert_label"] for x in expert)
    assert all(x["cost"] >= 0.002 for x in expert)
    audited = [x for x in lines if x["audited"]]
    assert audited  # an audited item outputs the expert's label, the cheap one beside it
    assert all(x["stage"] == "expert" and x["label"] == x["expert_label"] for x in audited)
    assert all(x["cheap_label"] in ("pos", "neg") for x in audited)
    assert all("cheap_label" not in x for x in lines if not x["audited"])
    assert set(lines[0]) >= {"id", "label", "stage", "confidence", "cost", "audited"}
    # the rejects: two broken lines, located
    rejects = read_jsonl(Path(f"{out}.rejects.jsonl"))
    assert [r["line"] for r in rejects] == [501, 1002]
    assert all("not valid JSON" in r["reason"] and r["raw"] == "{broken" for r in rejects)
    # the summary
    assert "1,200 answered of 1,202 records" in stdout
    assert "expert share" in stdout and "accuracy vs gold" in stdout
    assert "saving" in stdout
    # the report: one file, plots inside
    html = report.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 3
    assert "target agreement" in html and "hashed_ngram" in html
    # the replay log loads with tiered's own loader, one record per item with a known label
    log = load_replay(replay)
    assert set(log.models) == {"hashed_ngram", "expert"}
    assert len(log) == 1200  # the label-column expert is read for every item
    assert log.mean_quality()[log.model_index("expert")] == 1.0


def test_rerun_of_a_finished_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(300))
    out = tmp_path / "out.jsonl"
    assert tiered(capsys, "run", str(src), "-o", str(out), *QUICK)[0] == 0
    before = out.read_bytes()
    code, stdout, _ = tiered(capsys, "run", str(src), "-o", str(out), *QUICK)
    assert code == 0
    assert out.read_bytes() == before
    assert "300 answered of 300 records" in stdout


def test_limit_then_continue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(700)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert tiered(capsys, "run", str(src), "-o", str(out), *QUICK, "--limit", "250")[0] == 0
    assert len(read_jsonl(out)) == 250
    assert tiered(capsys, "run", str(src), "-o", str(out), *QUICK)[0] == 0
    assert [x["id"] for x in read_jsonl(out)] == [r["id"] for r in rows]
    with RunStore(Path(f"{out}.tiered.sqlite")) as store:
        cp = store.latest()
        assert cp is not None
        assert cp.counters["sessions"] == 2
        assert cp.learner["counters"]["n_items"] == 700  # learning went on, not restarted


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(body, encoding="utf-8")
    return p


CONFIG = """\
input:
  text_field: body
  id_field: key
  label_field: gold
cheap:
  - {kind: hashed_ngram, name: ngram}
expert:
  model: {kind: label_column, field: label}
  usd_per_call: 0.01
online:
  target_agreement: 0.95
  warmup: 100
checkpoint: {every_items: 200}
"""


def test_config_mode_csv_in_csv_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(600, seed=1)
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "body", "label", "gold"])
        for r in rows:
            w.writerow([r["id"], r["text"], r["label"], r["gold"]])
    out = tmp_path / "answers.csv"
    cfg = _config(tmp_path, CONFIG)
    code, stdout, err = tiered(capsys, "run", str(cfg), str(src), "-o", str(out), "--no-progress")
    assert code == 0, err
    with out.open(encoding="utf-8", newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == [
        "id", "label", "stage", "confidence", "cost", "audited", "expert_label", "cheap_label"
    ]  # fmt: skip
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert {g["stage"] for g in got} == {"ngram", "expert"}
    assert {g["audited"] for g in got} == {"true", "false"}
    assert all(g["label"] == g["expert_label"] for g in got if g["stage"] == "expert")
    for g in got:  # audited: the expert's label; the cheap one in its own column
        audited = g["audited"] == "true"
        assert (g["cheap_label"] != "") == audited
        assert not audited or (g["stage"] == "expert" and g["cheap_label"] in ("pos", "neg"))
    assert "$6.00 expert-only" in stdout  # 600 items at $0.01


def test_a_csv_output_with_other_columns_is_not_resumed(tmp_path: Path) -> None:
    from tiered.errors import StoreError
    from tiered.io.sinks import DecisionWriter, decision_row

    out = tmp_path / "answers.csv"
    old = b"id,label,stage,confidence,cost,audited,expert_label\nr0,pos,expert,1.0,0.01,false,pos\n"
    out.write_bytes(old)
    with pytest.raises(StoreError, match=r"cheap_label.*--fresh"):
        DecisionWriter(out, committed=len(old))
    assert out.read_bytes() == old  # left as it was
    # a CSV of this version resumes
    new = tmp_path / "new.csv"
    w = DecisionWriter(new)
    w.write([decision_row("r0", "pos", "expert", 1.0, 0.01, True, "pos", "neg")])
    size = w.sync()
    w.close()
    DecisionWriter(new, committed=size).close()
    assert new.read_text().splitlines()[1] == "r0,pos,expert,1.0,0.01,true,pos,neg"


def test_stdin_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = make_rows(300)
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    out = tmp_path / "out.jsonl"
    code, _, err = tiered(capsys, "run", "-", "-o", str(out), *QUICK, "--format", "jsonl")
    assert code == 0, err
    assert [x["id"] for x in read_jsonl(out)] == [r["id"] for r in rows]


@pytest.mark.parametrize(
    ("edit", "line", "field", "message"),
    [
        (("  target_agreement: 0.95", "  target_agreement: 1.5"), 11, "online.target_agreement",
         "less than 1"),
        (("  warmup: 100", "  warmup: 100\n  warmpu: 3"), 13, "online.warmpu", "Extra inputs"),
        (("{kind: hashed_ngram, name: ngram}", "{kind: hashed_ngrm}"), 6, "cheap.0.model",
         "unknown model kind 'hashed_ngrm'"),
        (("  usd_per_call: 0.01", "  usd_per_call: -1"), 9, "expert.usd_per_call",
         "greater than or equal to 0"),
        (("{kind: hashed_ngram, name: ngram}", "{kind: hashed_ngram, n_features: -3}"), 6,
         "cheap.0.model.n_features", "must be an int in [16, 2**30]. Got -3"),  # at build time
    ],
)  # fmt: skip
def test_bad_config_is_one_line_naming_file_line_and_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: tuple[str, str],
    line: int,
    field: str,
    message: str,
) -> None:
    assert edit[0] in CONFIG
    cfg = _config(tmp_path, CONFIG.replace(edit[0], edit[1]))
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(10))
    code, _, err = tiered(capsys, "run", str(cfg), str(src), "-o", str(tmp_path / "o.jsonl"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert f"{cfg}:{line}, field '{field}'" in err
    assert message in err
    assert not (tmp_path / "o.jsonl").exists()


def test_quick_mode_needs_the_expert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(10))
    code, _, err = tiered(capsys, "run", str(src), "-o", str(tmp_path / "o.jsonl"))
    assert code == 2
    assert "--expert-field" in err and len(err.strip().splitlines()) == 1
    code, _, err = tiered(capsys, "run", "run.yaml", "-o", str(tmp_path / "o.jsonl"))
    assert code == 2 and "looks like a config file" in err
    bad = [a if a != "0.96" else "1.5" for a in QUICK]
    code, _, err = tiered(capsys, "run", str(src), "-o", str(tmp_path / "o.jsonl"), *bad)
    assert code == 2 and "field '--target-agreement': Input should be less than 1" in err


def test_missing_text_column_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,body,label\n1,hi,pos\n", encoding="utf-8")
    code, _, err = tiered(capsys, "run", str(src), "-o", str(tmp_path / "o.jsonl"), *QUICK)
    assert code == 2
    assert f"{src}:1, field 'text': column not in the CSV header" in err


def test_a_different_run_on_the_same_output_is_refused_unless_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(300))
    out = tmp_path / "out.jsonl"
    assert tiered(capsys, "run", str(src), "-o", str(out), *QUICK)[0] == 0
    other = [a if a != "0.96" else "0.9" for a in QUICK]
    code, _, err = tiered(capsys, "run", str(src), "-o", str(out), *other)
    assert code == 2
    assert "holds a different run" in err and "--fresh" in err
    code, stdout, err = tiered(capsys, "run", str(src), "-o", str(out), *other, "--fresh")
    assert code == 0, err
    assert len(read_jsonl(out)) == 300
    assert "target 0.900" in stdout


# ------------------------------------------------------------------ defaults, loud failures

BASIC = ["--expert-field", "label", "--expert-cost", "0.002", "--no-progress"]


def test_ids_come_from_the_id_field_when_the_records_have_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = make_rows(50)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert tiered(capsys, "run", str(src), "-o", str(out), *BASIC)[0] == 0  # no --id-field
    assert [x["id"] for x in read_jsonl(out)] == [r["id"] for r in rows]
    no_ids = write_jsonl(tmp_path / "plain.jsonl", [{"text": r["text"], "label": r["label"]}
                                                    for r in rows])  # fmt: skip
    out = tmp_path / "plain_out.jsonl"
    assert tiered(capsys, "run", str(no_ids), "-o", str(out), *BASIC)[0] == 0
    assert [x["id"] for x in read_jsonl(out)] == [str(i) for i in range(1, 51)]  # line numbers
    table = tmp_path / "in.csv"
    table.write_text("text,id,label\n" + "".join(f"{r['text']},{r['id']},{r['label']}\n"
                                                  for r in rows))  # fmt: skip
    out = tmp_path / "csv_out.jsonl"
    assert tiered(capsys, "run", str(table), "-o", str(out), *BASIC)[0] == 0
    assert [x["id"] for x in read_jsonl(out)] == [r["id"] for r in rows]


def test_a_misspelt_field_stops_the_run_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(50))
    out = tmp_path / "out.jsonl"
    typo = ["--expert-field", "lable", "--expert-cost", "0.002", "--no-progress"]
    code, _, err = tiered(capsys, "run", str(src), "-o", str(out), *typo)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"{src}, field 'lable': no record has this field" in err
    assert "records have: id, text, label, gold (did you mean 'label'?)" in err
    assert not out.exists() and not Path(f"{out}.tiered.sqlite").exists()
    assert not Path(f"{out}.rejects.jsonl").exists()
    code, _, err = tiered(capsys, "run", str(src), "-o", str(out), "--text-field", "txt", *BASIC)
    assert code == 2 and "field 'txt': no record has this field" in err
    assert "(did you mean 'text'?)" in err
    # nothing was left behind: the corrected command runs as a new run
    code, stdout, err = tiered(capsys, "run", str(src), "-o", str(out), *BASIC)
    assert code == 0, err
    assert "50 answered of 50 records" in stdout


def test_a_share_of_rejects_over_the_limit_stops_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = make_rows(1200)
    for r in rows[::5] + rows[1::5] + rows[2::5]:  # 60% with an empty text
        r["text"] = ""
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    code, _, err = tiered(capsys, "run", str(src), "-o", str(out), *BASIC)
    assert code == 2
    assert "field 'text': 600 of the first 1,000 records were rejected for it" in err
    assert "is empty (the text field)" in err and not out.exists()
    code, stdout, err = tiered(
        capsys, "run", str(src), "-o", str(out), *BASIC, "--max-reject-share", "0.7"
    )
    assert code == 0, err
    assert "480 answered of 1,200 records (720 rejected" in stdout
    assert len(read_jsonl(Path(f"{out}.rejects.jsonl"))) == 720


def test_every_record_rejected_from_stdin_stops_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = "".join(json.dumps(r) + "\n" for r in make_rows(20)).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    out = tmp_path / "out.jsonl"
    typo = ["--expert-field", "Label", "--expert-cost", "0.002", "--no-progress"]
    code, _, err = tiered(capsys, "run", "-", "-o", str(out), *typo)
    assert code == 2 and "<stdin>, field 'Label': no record has this field" in err
    assert not out.exists()


def test_duplicate_ids_are_rejected_also_after_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = make_rows(600)
    again = {100: "r5", 250: "r7", 450: "r10", 520: "r500"}  # record index -> repeated id
    for i, rid in again.items():
        rows[i] = {**rows[i], "id": rid}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert tiered(capsys, "run", str(src), "-o", str(out), *BASIC, "--limit", "300")[0] == 0
    code, stdout, err = tiered(capsys, "run", str(src), "-o", str(out), *BASIC)  # resumes at 300
    assert code == 0, err
    ids = [x["id"] for x in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 596  # every id once, r10 too (answered before the kill)
    assert "596 answered of 600 records (4 rejected" in stdout
    rejects = read_jsonl(Path(f"{out}.rejects.jsonl"))
    assert [(r["line"], r["field"]) for r in rejects] == [(i + 1, "id") for i in sorted(again)]
    why = f"{src}:451, field 'id': duplicate id 'r10': an earlier record has it"
    assert why in rejects[2]["reason"]
    assert json.loads(rejects[2]["raw"])["id"] == "r10"
