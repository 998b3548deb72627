"""The HTML report of ``tiered run --report``: one self-contained file, plots over time.

The input is the run's history (one row per batch, cumulative counters, as committed by
the run store), its summary and its config. Plots are PNGs (matplotlib, Agg) embedded as
base64, so the file can be mailed or attached to a ticket as it is.

Rates "over time" are shown two ways: cumulative (what the run has done so far) and over
a sliding window of recent items (what it is doing now, where a distribution shift shows).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_EXPERT = "#d1495b"
_CUMUL = "#1f3b5c"
_AGREE = "#2e7d5b"
_TARGET = "#e0a100"
_TRUTH = "#5b7fa6"
_STAGE_COLORS = ("#5b7fa6", "#66a182", "#8e7cc3", "#e0a100", "#4aa3a2", "#a0522d")


def _col(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _window(n: np.ndarray, num: np.ndarray, w: int) -> np.ndarray:
    """Rate of ``num`` per item over the last ``w`` items, from cumulative counts."""
    n0 = np.concatenate([[0.0], n])
    v0 = np.concatenate([[0.0], num])
    j = np.searchsorted(n0, n - w, side="left")
    j = np.minimum(j, np.arange(1, len(n0)) - 1)
    dn = n - n0[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dn > 0, (num - v0[j]) / dn, np.nan)


def window_size(n_items: int) -> int:
    """Items per sliding window: about a twentieth of the stream, within [100, 5000]."""
    return int(min(5000, max(100, n_items // 20)))


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def stream_figures(
    history: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    *,
    learner_window: int | None = None,
) -> dict[str, bytes]:
    """The report's plots as PNG bytes: ``expert_share``, ``agreement``, ``cost``, ``stages``.

    ``learner_window`` is the learner's own sliding window (items), for the legend of its
    windowed agreement estimate.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MultipleLocator, PercentFormatter

    rows = [r for r in history if r.get("n", 0) > 0]
    if not rows:
        return {}
    n = _col(rows, "n")
    w = window_size(int(n[-1]))
    calls = _col(rows, "expert_calls")
    figs: dict[str, bytes] = {}

    def axes(title: str, ylabel: str) -> tuple[Any, Any]:
        fig, ax = plt.subplots(figsize=(9, 3.6), dpi=130)
        ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
        ax.set_xlabel("items answered")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:,.0f}"))
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlim(0, n[-1])
        return fig, ax

    def legend_below(ax: Any) -> None:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)

    # 1. expert share
    fig, ax = axes("Share of items sent to the expert", "expert share")
    ax.plot(n, _window(n, calls, w), color=_EXPERT, lw=1.8, label=f"last {w:,} items")
    ax.plot(n, calls / n, color=_CUMUL, lw=1.4, ls="--", label="cumulative")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(0, 1.02)
    legend_below(ax)
    figs["expert_share"] = _fig_png(fig)

    # 2. agreement with the expert: the audited estimate and its CI, the target
    agree = _col(rows, "agreement")
    lo, hi = _col(rows, "ci_low"), _col(rows, "ci_high")
    win = _col(rows, "window_agreement")
    target = summary.get("target")
    truth_n, truth_agree = _col(rows, "truth_n"), _col(rows, "truth_agree")
    has_truth = bool((np.nan_to_num(truth_n) > 0).any())
    if np.isfinite(agree).any() or has_truth:
        fig, ax = axes("Agreement with the expert", "agreement")
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(
                n, lo, hi, where=ok, color=_AGREE, alpha=0.18, lw=0, label="95% CI (cumulative)"
            )
        ax.plot(n, agree, color=_AGREE, lw=2.0, label="audited estimate, cumulative")
        if np.isfinite(win).any():
            ax.plot(
                n,
                win,
                color=_AGREE,
                lw=1.0,
                alpha=0.7,
                ls="-.",
                label=(
                    f"audited estimate, last {learner_window:,} items"
                    if learner_window
                    else "audited estimate, recent items"
                ),
            )
        if has_truth:
            with np.errstate(invalid="ignore", divide="ignore"):
                true_cum = truth_agree / truth_n
            ax.plot(
                n, true_cum, color=_TRUTH, lw=1.4, ls=":", label="true (label column), cumulative"
            )
        if target is not None:
            ax.axhline(float(target), color=_TARGET, lw=1.5, ls="--", label=f"target {target:g}")
        seen = np.concatenate([a[np.isfinite(a)] for a in (agree, lo, win)])
        bottom = min(float(np.min(seen)) if seen.size else 0.9, float(target or 1.0))
        ax.set_ylim(max(0.0, bottom - 0.02), 1.005)
        # whole-percent ticks only, so no two ticks print the same label
        ax.yaxis.set_major_locator(MultipleLocator(0.05 if bottom < 0.8 else 0.02))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        legend_below(ax)
        figs["agreement"] = _fig_png(fig)

    # 3. money: cumulative spend against asking the expert everything
    spent, only = _col(rows, "usd_spent"), _col(rows, "usd_expert_only")
    if np.nanmax(np.nan_to_num(only)) > 0:
        fig, ax = axes("Cumulative cost", "USD")
        ax.plot(n, only, color=_CUMUL, lw=1.6, ls="--", label="expert only")
        ax.plot(n, spent, color=_EXPERT, lw=1.8, label="tiered")
        ax.fill_between(n, spent, only, color=_AGREE, alpha=0.12, lw=0, label="saved")
        saving = 1 - spent[-1] / only[-1] if only[-1] > 0 else math.nan
        if math.isfinite(saving):
            ax.annotate(
                # "\$": a pair of bare dollar signs would start matplotlib's math mode
                f"\\${spent[-1]:,.2f} vs \\${only[-1]:,.2f}\nsaving {100 * saving:.0f}%",
                xy=(n[-1], spent[-1]),
                xytext=(-10, 20),
                textcoords="offset points",
                ha="right",
                fontsize=10,
            )
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"${x:,.2f}"))
        ax.set_ylim(0, None)
        legend_below(ax)
        figs["cost"] = _fig_png(fig)

    # 4. which stage answered, over a sliding window
    names = list(summary.get("stage_share") or {})
    if names:
        fig, ax = axes(f"Who answered (last {w:,} items)", "share of items")
        shares = []
        for name in names:
            cnt = np.array([float((r.get("stage_counts") or {}).get(name, 0)) for r in rows])
            shares.append(np.nan_to_num(_window(n, cnt, w)))
        colors = [
            _EXPERT if s == "expert" else _STAGE_COLORS[i % len(_STAGE_COLORS)]
            for i, s in enumerate(names)
        ]
        ax.stackplot(n, np.vstack(shares), labels=names, colors=colors, alpha=0.85)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylim(0, 1)
        legend_below(ax)
        figs["stages"] = _fig_png(fig)
    return figs


def _fmt_pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _fmt_usd(x: Any) -> str:
    return "–" if x is None else f"${float(x):,.2f}" if float(x) >= 1 else f"${float(x):.4g}"


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
    if s.get("agreement") is not None:
        ci = ""
        if s.get("ci_low") is not None and s.get("ci_high") is not None:
            ci = f" (95% CI {s['ci_low']:.3f}–{s['ci_high']:.3f})"
        rows.append(("agreement with the expert (audited)", f"{s['agreement']:.3f}{ci}"))
    if s.get("target") is not None:
        rows.append(("target agreement", f"{s['target']:.3f}"))
    if s.get("true_agreement") is not None:
        rows.append(("agreement with the expert (true)", f"{s['true_agreement']:.3f}"))
    if s.get("accuracy") is not None:
        rows.append(("accuracy vs gold", f"{s['accuracy']:.3f}"))
    if s.get("expert_accuracy") is not None:
        rows.append(("expert's accuracy vs gold", f"{s['expert_accuracy']:.3f}"))
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


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:980px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;color:#1f3b5c}
.sub{color:#666;margin-top:0} h3{font-size:1em;margin:1.2em 0 .2em 0}
.cap{color:#555;margin:.2em 0;font-size:.92em}
table{border-collapse:collapse;margin:.5em 0}
td{padding:.3em 1.2em .3em 0;border-bottom:1px solid #eee}
td:first-child{color:#555} td:last-child{font-weight:600;font-variant-numeric:tabular-nums}
.kpis{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.kpi{background:#f5f7fa;border-radius:8px;padding:.8em 1.1em;min-width:150px}
.kpi b{display:block;font-size:1.5em;color:#1f3b5c} .kpi span{color:#666;font-size:.9em}
img{max-width:100%;margin:.4em 0 1em 0}
pre{background:#f5f7fa;padding:1em;border-radius:6px;overflow-x:auto;font-size:.85em}
"""


def render_stream_report(
    *,
    history: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    title: str = "tiered run",
) -> str:
    """The report as one HTML string (plots embedded)."""
    import yaml

    esc = html.escape
    online = config.get("online")
    window = online.get("window") if isinstance(online, Mapping) else None
    figs = stream_figures(history, summary, learner_window=window)
    kpis = [
        (_fmt_pct(summary.get("expert_share")), "sent to the expert"),
        (
            "–" if summary.get("agreement") is None else f"{summary['agreement']:.3f}",
            "agreement (audited)"
            + ("" if summary.get("target") is None else f", target {summary['target']:.3f}"),
        ),
        (_fmt_pct(summary.get("saving")), "saved vs expert only"),
        (f"{summary.get('items', 0):,}", "items answered"),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class='sub'>output {esc(str(summary.get('output', '')))}</p>",
        "<div class='kpis'>",
        *(f"<div class='kpi'><b>{esc(v)}</b><span>{esc(k)}</span></div>" for v, k in kpis),
        "</div>",
        "<h2>Summary</h2><table>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary_rows(summary)),
        "</table>",
    ]
    expert = "the expert (the costly last stage)"
    captions = {
        "expert_share": (
            "Expert share",
            f"Share of items sent to {expert}: answered by it, or audited (a cheap answer "
            "double-checked at random). High at the start while the cheap stages learn; it "
            "rises again when the stream changes.",
        ),
        "agreement": (
            "Agreement with the expert",
            "How often the output label equals the expert's, estimated from the random "
            "audits, with its 95% confidence interval; the run steers to stay at or above "
            "the target.",
        ),
        "cost": (
            "Cost",
            f"Money spent so far, against what sending every item to {expert} would cost.",
        ),
        "stages": ("Stage mix", "Which stage gave the answer, over recent items."),
    }
    if figs:
        parts.append("<h2>Over time</h2>")
    for key, png in figs.items():
        name, text = captions.get(key, (key, ""))
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<h3>{esc(name)}</h3><p class='cap'>{esc(text)}</p>")
        parts.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{esc(yaml.safe_dump(dict(config), sort_keys=False))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_stream_report(
    path: str | Path,
    *,
    history: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    title: str = "tiered run",
) -> Path:
    """Write the self-contained HTML report to ``path``; returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = render_stream_report(history=history, summary=summary, config=config, title=title)
    p.write_text(text, encoding="utf-8")
    return p


__all__ = [
    "render_stream_report",
    "stream_figures",
    "summary_rows",
    "window_size",
    "write_stream_report",
]
