"""The HTML report of a run (``tiered run --report``, ``tiered report STORE``).

One self-contained UTF-8 file: what ran (date, tiered version, input, a readable table of
the set-up), the headline figures (expert share, agreement with the expert, true when the
expert's label is known for every item, accuracy against gold labels with the expert's
own, the certified bound when the run tracks one, money saved), and plots over time
(PNGs from :mod:`tiered.eval.stream_figures`, embedded as base64, so the file can be
mailed or attached to a ticket as it is). Every setting is listed too, folded away.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiered.eval.metrics import format_usd
from tiered.eval.stream_figures import column, has_bound, stream_figures, window_size

_KEY_SETTINGS = ("target_agreement", "mu", "audit_rate", "warmup", "control", "confidence")


def _fmt_pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _fmt_usd(x: Any) -> str:
    return "–" if x is None else f"${float(x):,.2f}" if float(x) >= 1 else format_usd(float(x))


def _last(history: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = column(history, key)
    ok = values[np.isfinite(values)]
    return float(ok[-1]) if ok.size else None


def summary_rows(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary as (metric, value) rows, for people."""
    rows = [
        ("items answered", f"{s['items']:,} of {s['records']:,} records"),
        ("rejected records", f"{s['rejects']:,}"),
        (
            "expert share",
            f"{_fmt_pct(s['expert_share'])} ({s['expert_calls']:,} calls, {s['audits']:,} audits)",
        ),
    ]
    if s.get("true_agreement") is not None:
        rows.append(("agreement with the expert (true, every item)", f"{s['true_agreement']:.3f}"))
    if s.get("agreement") is not None:
        if not s.get("audits"):
            value = f"{s['agreement']:.3f} (every answer is the expert's own: nothing to audit)"
        else:
            ci = ""
            if s.get("ci_low") is not None and s.get("ci_high") is not None:
                ci = f" (95% CI {s['ci_low']:.3f}–{s['ci_high']:.3f})"
            value = f"{s['agreement']:.3f}{ci}"
        rows.append(("agreement with the expert (audited estimate)", value))
    if s.get("cs_low") is not None:
        rows.append(("agreement, certified lower bound", f"≥ {s['cs_low']:.3f}"))
    if s.get("target") is not None:
        rows.append(("target agreement", f"{s['target']:.3f}"))
    if s.get("accuracy") is not None:
        rows.append(("accuracy vs gold", f"{s['accuracy']:.3f}"))
    if s.get("expert_accuracy") is not None:
        rows.append(("the expert's own accuracy vs gold", f"{s['expert_accuracy']:.3f}"))
    rows.append(("USD spent", _fmt_usd(s["usd_spent"])))
    rows.append(("USD if the expert answered all", _fmt_usd(s["usd_expert_only"])))
    if s.get("saving") is not None:
        rows.append(("saving", _fmt_pct(s["saving"])))
    ips = s.get("items_per_s")
    rows.append(("wall time", f"{s['wall_s']:,.1f} s"))
    if ips is not None and math.isfinite(ips):
        rows.append(("throughput", f"{ips:,.0f} items/s"))
    for name, share in (s.get("stage_share") or {}).items():
        rows.append((f"answered by {name}", _fmt_pct(share)))
    return rows


def _model_text(model: Mapping[str, Any]) -> str:
    """A model spec in a few words: its kind and its short scalar settings."""
    shown = [
        f"{k}={v}"
        for k, v in model.items()
        if k not in ("kind", "name")
        and isinstance(v, str | int | float)
        and len(str(v)) <= 48
        and "\n" not in str(v)
    ][:4]
    labels = model.get("labels")
    if isinstance(labels, list) and labels:
        shown.append("labels " + ", ".join(map(str, labels[:8])))
    return f"{model.get('kind', '?')}" + (f" ({'; '.join(shown)})" if shown else "")


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``config[key]`` when it is a mapping, else an empty one."""
    value = config.get(key)
    return value if isinstance(value, Mapping) else {}


def _stage_rows(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(stage, model, price) of every stage, cheapest first."""
    out = []
    stages = [*(config.get("cheap") or []), config.get("expert")]
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping):
            continue
        model = _section(stage, "model") or stage
        is_expert = i == len(stages) - 1
        name = "expert" if is_expert else str(stage.get("name") or model.get("kind", "?"))
        price = stage.get("usd_per_call")
        out.append(
            (
                name,
                _model_text(model),
                "reported by the model" if price is None else f"{format_usd(price)} per call",
            )
        )
    return out


def setup_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run's set-up in a few readable rows (every setting is in :func:`settings_rows`)."""
    rows: list[tuple[str, str]] = []
    fields = _section(config, "input")
    read = [
        f"{what} `{fields[key]}`"
        for key, what in (("text_field", "text"), ("id_field", "id"), ("label_field", "gold"))
        if fields.get(key)
    ]
    if read:
        rows.append(("fields read", ", ".join(read)))
    online = _section(config, "online")
    if online.get("target_agreement") is not None:
        steer = f"hold agreement with the expert ≥ {online['target_agreement']}"
        if online.get("control"):
            steer += f" (controller: {online['control']}"
            conf = online.get("confidence")
            steer += f", {100 * float(conf):g}% confidence)" if conf is not None else ")"
        rows.append(("objective", steer))
    elif online:
        mu = online.get("mu")
        rows.append(("objective", f"cost coefficient mu = {0.1 if mu is None else mu}"))
    if online.get("audit_rate") is not None:
        rows.append(("audits", f"{_fmt_pct(online['audit_rate'])} of the cheap answers"))
    if online.get("warmup") is not None:
        rows.append(("warm-up", f"the first {online['warmup']:,} items go to the expert"))
    for key in ("seed", "batch_size"):
        if config.get(key) is not None:
            rows.append((key.replace("_", " "), f"{config[key]}"))
    return rows


def settings_rows(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Every setting as (dotted key, value), nested sections flattened."""
    rows: list[tuple[str, str]] = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(settings_rows(value, f"{path}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                rows.extend(settings_rows(v, f"{path}[{i}]."))
        else:
            rows.append((path, json.dumps(value, ensure_ascii=False, default=str)))
    return rows


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:980px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;color:#1f3b5c}
h3{font-size:1em;margin:1.2em 0 .2em 0}
.meta{color:#555;margin:.2em 0 0 0;font-size:.92em} .meta b{color:#222;font-weight:600}
.cap{color:#555;margin:.2em 0;font-size:.92em}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.3em 1.2em .3em 0;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{color:#1f3b5c;font-weight:600}
table.kv td:first-child{color:#555} table.kv td:last-child{font-weight:600}
td.num{font-variant-numeric:tabular-nums}
.kpis{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.kpi{background:#f5f7fa;border-radius:8px;padding:.8em 1.1em;min-width:150px}
.kpi b{display:block;font-size:1.5em;color:#1f3b5c} .kpi span{color:#666;font-size:.9em}
img{max-width:100%;margin:.4em 0 1em 0}
code{background:#f5f7fa;padding:0 .25em;border-radius:3px}
details{margin:1em 0} summary{cursor:pointer;color:#1f3b5c;font-weight:600}
"""

_CAPTIONS = {
    "expert_share": (
        "Expert share",
        "Share of items sent to the expert (the costly last stage): answered by it, or "
        "audited (a cheap answer double-checked at random). High at the start while the "
        "cheap stages learn; it rises again when the stream changes.",
    ),
    "agreement": (
        "Agreement with the expert",
        "How often the output label equals the expert's. The audited estimate comes from "
        "the random audits, with its 95% interval; the run steers it to stay at or above "
        "the target.",
    ),
    "accuracy": (
        "Accuracy against the gold labels",
        "How often the output equals the input's gold label, next to the expert's own "
        "accuracy: the cheap stages learn to agree with the expert, its mistakes included.",
    ),
    "cost": (
        "Cost",
        "Money spent so far, against what sending every item to the expert would cost.",
    ),
    "stages": ("Stage mix", "Which stage gave the answer, over recent items."),
}


def _table(
    rows: Sequence[Sequence[str]], header: Sequence[str] | None = None, cls: str = ""
) -> list[str]:
    esc = html.escape
    out = [f"<table class='{cls}'>" if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    out += ["<tr>" + "".join(f"<td>{_code(c)}</td>" for c in row) + "</tr>" for row in rows]
    out.append("</table>")
    return out


def _code(text: str) -> str:
    """``text`` escaped, with `backquoted` parts as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _kpis(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    kpis = [(_fmt_pct(summary.get("expert_share")), "sent to the expert")]
    target = "" if summary.get("target") is None else f", target {summary['target']:.3f}"
    if summary.get("true_agreement") is not None:
        kpis.append((f"{summary['true_agreement']:.3f}", f"agreement with the expert{target}"))
    elif summary.get("agreement") is not None:
        kpis.append((f"{summary['agreement']:.3f}", f"agreement (audited){target}"))
    if summary.get("cs_low") is not None:
        kpis.append((f"≥ {summary['cs_low']:.3f}", "agreement, certified"))
    if summary.get("accuracy") is not None:
        own = summary.get("expert_accuracy")
        said = "accuracy vs gold" + ("" if own is None else f" (expert alone {own:.3f})")
        kpis.append((f"{summary['accuracy']:.3f}", said))
    kpis.append((_fmt_pct(summary.get("saving")), "saved vs expert only"))
    kpis.append((f"{summary.get('items', 0):,}", "items answered"))
    return kpis


def render_stream_report(
    *,
    history: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    title: str = "tiered run",
    input: str | None = None,
    generated: dt.datetime | None = None,
) -> str:
    """The report as one HTML string (plots embedded).

    ``input`` is where the run read from; ``generated`` the report's time (default: now).
    """
    from tiered.version import __version__

    esc = html.escape
    summary = dict(summary)
    bound = _last(history, "cs_low") if has_bound(history) else None
    if bound is not None:
        summary.setdefault("cs_low", bound)
    online = config.get("online")
    window = online.get("window") if isinstance(online, Mapping) else None
    figs = stream_figures(history, summary, learner_window=window)
    when = (generated or dt.datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z").strip()
    meta = [("generated", when), ("tiered", __version__)]
    meta += [
        (k, str(v))
        for k, v in (
            ("input", input),
            ("output", summary.get("output")),
            ("state store", summary.get("store")),
        )
        if v
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p class='meta'>" + " · ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in meta) + "</p>",
        "<div class='kpis'>",
        *(
            f"<div class='kpi'><b>{esc(v)}</b><span>{esc(k)}</span></div>"
            for v, k in _kpis(summary)
        ),
        "</div>",
        "<h2>Summary</h2>",
        *_table(summary_rows(summary), cls="kv"),
        "<h2>Set-up</h2>",
        *_table(_stage_rows(config), header=("stage", "model", "price")),
        *_table(setup_rows(config), cls="kv"),
    ]
    if figs:
        parts.append("<h2>Over time</h2>")
    for key, png in figs.items():
        name, text = _CAPTIONS.get(key, (key, ""))
        if key == "agreement" and column(history, "truth_n").max(initial=0) > 0:
            text += (
                " The true agreement is measured on every item, the expert's label "
                "being free to read (a label column)."
            )
        if key == "agreement" and bound is not None:
            text += (
                " The certified lower bound comes from a confidence sequence: it holds "
                "at every item at once, however often the run is looked at."
            )
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h3>{esc(name)}</h3><p class='cap'>{esc(text)}</p>")
        parts.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{b64}'>")
    settings = settings_rows(config)
    parts.append(f"<details><summary>All settings ({len(settings)})</summary>")
    parts += _table([(f"`{k}`", v) for k, v in settings], header=("setting", "value"))
    parts.append("</details></body></html>")
    return "\n".join(parts)


def write_stream_report(
    path: str | Path,
    *,
    history: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    title: str = "tiered run",
    input: str | None = None,
) -> Path:
    """Write the self-contained HTML report to ``path`` (UTF-8); returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = render_stream_report(
        history=history, summary=summary, config=config, title=title, input=input
    )
    p.write_text(text, encoding="utf-8")
    return p


__all__ = [
    "render_stream_report",
    "settings_rows",
    "setup_rows",
    "stream_figures",
    "summary_rows",
    "window_size",
    "write_stream_report",
]
