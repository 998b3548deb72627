"""The HTML report of a run, as a person sees it: rendered by a real headless browser.

The browser test FAILS (never skips) when chromium is missing, saying how to get it.
"""

from __future__ import annotations

import json
import random
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests._browser import file_url, open_page
from tiered.cli import main
from tiered.eval.stream_report import render_stream_report, summary_rows

from ._cli import tiered as run_cli

WORDS = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "grim"]}
FIGURES = {
    "Expert share",
    "Agreement with the expert",
    "Accuracy against the gold labels",
    "Cost",
    "Stage mix",
}


def write_input(path: Path, n: int) -> Path:
    """Two classes; ``label`` is the expert's (wrong on every 11th item), ``gold`` the truth."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            gold = rng.choice(sorted(WORDS))
            text = " ".join(rng.choice(["the", "film", "plot", *WORDS[gold]]) for _ in range(8))
            label = gold if i % 11 else ("neg" if gold == "pos" else "pos")
            f.write(json.dumps({"id": f"r{i}", "text": text, "label": label, "gold": gold}) + "\n")
    return path


def tiered(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, *args)
    return code, out + err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One quick-mode run with gold labels and a report."""
    tmp = tmp_path_factory.mktemp("run")
    src = write_input(tmp / "reviews.jsonl", 1500)
    out, report = tmp / "out.jsonl", tmp / "report.html"
    old = sys.argv
    sys.argv = [
        "tiered", "run", str(src), "-o", str(out), "--expert-field", "label",
        "--label-field", "gold", "--expert-cost", "0.002", "--target-agreement", "0.95",
        "--no-progress", "--report", str(report),
    ]  # fmt: skip
    try:
        main()
    except SystemExit as exc:
        assert not exc.code
    finally:
        sys.argv = old
    return {"input": src, "output": out, "report": report, "store": Path(f"{out}.tiered.sqlite")}


def test_the_report_renders_in_a_browser_with_every_figure(run: dict[str, Path]) -> None:
    page = open_page(file_url(run["report"]))
    assert page.errors == []
    assert page.title == "tiered run: reviews.jsonl"
    shown = {img["alt"] for img in page.images}
    assert shown == FIGURES
    for img in page.images:  # decoded, and laid out at a readable size
        assert img["complete"] and img["naturalWidth"] > 400 and img["width"] > 400, img
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.text
    # what ran: when, which tiered, on what
    assert re.search(r"generated \d{4}-\d\d-\d\d \d\d:\d\d", text)
    assert f"tiered {version('tiered')}" in text
    assert str(run["input"]) in text
    # true agreement and the expert's own accuracy, since the input has both
    assert "agreement with the expert (true, every item)" in text
    assert "the expert's own accuracy vs gold" in text
    assert "expert alone" in text
    # a readable set-up, every setting folded away
    assert "hold agreement with the expert ≥ 0.95" in text
    assert "label_column (field=label)" in text


def test_the_browser_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The harness itself: a missing image and a script error are reported."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>x</title></head><body>"
        "<img alt='gone' src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    got = open_page(file_url(page))
    assert any("boom" in e for e in got.errors)
    assert any(e.startswith("exception") for e in got.errors)
    assert got.images == [
        {"alt": "gone", "complete": True, "naturalWidth": 0, "naturalHeight": 0,
         "width": got.images[0]["width"], "height": got.images[0]["height"]}
    ]  # fmt: skip


def _summary_text(html: str) -> list[str]:
    table = html.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    return re.findall(r"<td>(.*?)</td>", table)


def test_tiered_report_rewrites_the_report_from_the_store(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = tmp_path / "again.html"
    code, said = tiered(capsys, "report", str(run["store"]), "-o", str(again))
    assert code == 0, said
    assert f"report written to {again}" in said
    first = run["report"].read_text(encoding="utf-8")
    second = again.read_text(encoding="utf-8")
    numbers = [c for c in _summary_text(first) if not c.startswith("wall")]
    assert numbers == [c for c in _summary_text(second) if not c.startswith("wall")]
    assert second.count("data:image/png;base64,") == len(FIGURES)
    # default name: next to the store
    code, said = tiered(capsys, "report", str(run["store"]))
    assert code == 0 and Path(f"{run['store']}.html").is_file()


def test_tiered_report_on_a_missing_store_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = tiered(capsys, "report", str(tmp_path / "nope.sqlite"))
    assert code == 2
    assert "no state store at" in said and "nope.sqlite" in said
    assert not (tmp_path / "nope.sqlite").exists()  # looking did not create one


SUMMARY = {
    "records": 10, "items": 10, "rejects": 0, "expert_calls": 4, "expert_share": 0.4,
    "audits": 2, "agreement": 0.9, "ci_low": 0.8, "ci_high": 0.95, "target": 0.9,
    "usd_spent": 0.025, "usd_expert_only": 0.05, "wall_s": 1.0, "stage_share": {},
    "saving": 0.5, "items_per_s": 10.0,
}  # fmt: skip


def history(with_bound: bool) -> list[dict[str, float]]:
    rows = []
    for n in range(100, 1100, 100):
        row = {"n": n, "expert_calls": n * 0.4, "agreement": 0.93, "ci_low": 0.9,
               "ci_high": 0.96, "usd_spent": n * 2.5e-5, "usd_expert_only": n * 5e-5}  # fmt: skip
        if with_bound:
            row["cs_low"] = 0.85 + n / 1e5
        rows.append(row)
    return rows


def test_the_report_is_utf8_and_shows_settings_as_written() -> None:
    config = {
        "expert": {"model": {"kind": "llamacpp", "demos": [{"input": "boilerplate clichés"}]}},
        "online": {"target_agreement": 0.9},
    }
    html = render_stream_report(history=history(False), summary=SUMMARY, config=config)
    assert "<meta charset='utf-8'>" in html
    assert "clichés" in html
    assert "\\xE9" not in html and "\\xe9" not in html and "\\u00e9" not in html
    assert "<code>expert.model.demos[0].input</code>" in html


def test_money_in_the_summary_is_exact() -> None:
    rows = dict(summary_rows(SUMMARY))
    assert rows["USD spent"] == "$0.025"  # not "$0.03"


def test_the_certified_bound_is_shown_when_the_run_tracks_one() -> None:
    without = render_stream_report(history=history(False), summary=SUMMARY, config={})
    assert "certified" not in without
    html = render_stream_report(history=history(True), summary=SUMMARY, config={})
    assert "agreement, certified lower bound" in html
    assert "≥ 0.860" in html  # the last row's bound
    assert "confidence sequence" in html
