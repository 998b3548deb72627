"""The plots of a run's HTML report: PNGs over the items answered, from its history rows.

History rows are cumulative counters, one per batch (as the run store commits them).
Rates are shown two ways: cumulative (what the run has done so far) and over a sliding
window of recent items (what it is doing now, where a shift in the stream shows).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tiered.eval.metrics import format_usd

_EXPERT = "#d1495b"
_CUMUL = "#1f3b5c"
_AGREE = "#2e7d5b"
_TARGET = "#e0a100"
_TRUTH = "#5b7fa6"
_BOUND = "#7b4fa0"
_STAGE_COLORS = ("#5b7fa6", "#66a182", "#8e7cc3", "#e0a100", "#4aa3a2", "#a0522d")


def column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """``key`` of every row as floats (NaN where a row lacks it)."""
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


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def window_size(n_items: int) -> int:
    """Items per sliding window: about a twentieth of the stream, within [100, 5000]."""
    return int(min(5000, max(100, n_items // 20)))


def has_bound(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the history carries the agreement's confidence sequence (``cs_low``)."""
    return bool(np.isfinite(column(rows, "cs_low")).any())


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class _Canvas:
    """Figures in one style: a wide axes over the items answered, the legend below."""

    def __init__(self, n_last: float) -> None:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt

        self.plt = plt
        self.n_last = n_last

    def axes(self, title: str, ylabel: str) -> tuple[Any, Any]:
        from matplotlib.ticker import FuncFormatter

        fig, ax = self.plt.subplots(figsize=(9, 3.6), dpi=120)
        ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
        ax.set_xlabel("items answered")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: f"{x:,.0f}"))
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlim(0, self.n_last)
        return fig, ax

    @staticmethod
    def legend_below(ax: Any, ncol: int = 3) -> None:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False)


def _percent_axis(ax: Any, low: float) -> None:
    from matplotlib.ticker import MultipleLocator, PercentFormatter

    ax.set_ylim(max(0.0, low - 0.02), 1.005)
    # whole-percent ticks only, so no two ticks print the same label
    ax.yaxis.set_major_locator(MultipleLocator(0.05 if low < 0.8 else 0.02))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _agreement(
    canvas: _Canvas,
    rows: Sequence[Mapping[str, Any]],
    n: np.ndarray,
    target: float | None,
    learner_window: int | None,
) -> bytes | None:
    agree = column(rows, "agreement")
    lo, hi = column(rows, "ci_low"), column(rows, "ci_high")
    win = column(rows, "window_agreement")
    true_cum = _ratio(column(rows, "truth_agree"), column(rows, "truth_n"))
    bound = column(rows, "cs_low")
    if not (np.isfinite(agree).any() or np.isfinite(true_cum).any()):
        return None
    fig, ax = canvas.axes("Agreement with the expert", "agreement")
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(
            n,
            lo,
            hi,
            where=ok,
            color=_AGREE,
            alpha=0.15,
            lw=0,
            label="95% interval of the audited estimate",
        )
    ax.plot(n, agree, color=_AGREE, lw=2.0, label="audited estimate, cumulative")
    if np.isfinite(win).any():
        recent = f"last {learner_window:,} items" if learner_window else "recent items"
        ax.plot(
            n, win, color=_AGREE, lw=1.0, alpha=0.7, ls="-.", label=f"audited estimate, {recent}"
        )
    if np.isfinite(true_cum).any():
        ax.plot(
            n,
            true_cum,
            color=_TRUTH,
            lw=2.0,
            ls="-",
            label="true agreement (expert's label on every item), cumulative",
        )
    if np.isfinite(bound).any():
        ax.plot(
            n,
            bound,
            color=_BOUND,
            lw=1.6,
            ls="--",
            label="certified lower bound (confidence sequence)",
        )
    if target is not None:
        ax.axhline(float(target), color=_TARGET, lw=1.5, ls="--", label=f"target {target:g}")
    seen = np.concatenate([a[np.isfinite(a)] for a in (agree, lo, win, true_cum, bound)])
    _percent_axis(ax, min(float(np.min(seen)) if seen.size else 0.9, float(target or 1.0)))
    canvas.legend_below(ax, ncol=2)
    return _png(fig)


def _cost(canvas: _Canvas, rows: Sequence[Mapping[str, Any]], n: np.ndarray) -> bytes | None:
    from tiered.eval.ticks import UsdFormatter

    spent, only = column(rows, "usd_spent"), column(rows, "usd_expert_only")
    if not np.nanmax(np.nan_to_num(only)) > 0:
        return None
    fig, ax = canvas.axes("Cumulative cost", "USD")
    ax.plot(n, only, color=_CUMUL, lw=1.6, ls="--", label="expert only")
    ax.plot(n, spent, color=_EXPERT, lw=1.8, label="tiered")
    ax.fill_between(n, spent, only, color=_AGREE, alpha=0.12, lw=0, label="saved")
    if only[-1] > 0:
        saving = 1 - spent[-1] / only[-1]
        # "\$": a bare pair of dollar signs would start matplotlib's math mode
        said = f"{format_usd(spent[-1])} vs {format_usd(only[-1])}".replace("$", "\\$")
        ax.annotate(
            f"{said}\nsaving {100 * saving:.0f}%",
            xy=(n[-1], spent[-1]),
            xytext=(-10, 20),
            textcoords="offset points",
            ha="right",
            fontsize=10,
        )
    ax.yaxis.set_major_formatter(UsdFormatter())
    ax.set_ylim(0, None)
    canvas.legend_below(ax)
    return _png(fig)


def _accuracy(
    canvas: _Canvas, rows: Sequence[Mapping[str, Any]], n: np.ndarray, summary: Mapping[str, Any]
) -> bytes | None:
    acc = _ratio(column(rows, "gold_correct"), column(rows, "gold_n"))
    if not np.isfinite(acc).any():
        return None
    fig, ax = canvas.axes("Accuracy against the gold labels", "accuracy")
    ax.plot(n, acc, color=_CUMUL, lw=2.0, label="tiered's output, cumulative")
    expert = summary.get("expert_accuracy")
    if expert is not None:
        ax.axhline(
            float(expert),
            color=_EXPERT,
            lw=1.4,
            ls="--",
            label=f"the expert alone ({100 * float(expert):.1f}%)",
        )
    seen = acc[np.isfinite(acc)]
    _percent_axis(ax, min(float(seen.min()), float(expert if expert is not None else 1.0)))
    canvas.legend_below(ax, ncol=2)
    return _png(fig)


def stream_figures(
    history: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    *,
    learner_window: int | None = None,
) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by name: ``expert_share``, ``agreement`` (with the
    true agreement and the certified bound when the history has them), ``accuracy`` (with
    gold labels), ``cost``, ``stages``. A plot without data is left out.

    ``learner_window`` is the learner's own sliding window (items), for the legend of its
    windowed agreement estimate.
    """
    from matplotlib.ticker import PercentFormatter

    rows = [r for r in history if r.get("n", 0) > 0]
    if not rows:
        return {}
    n = column(rows, "n")
    w = window_size(int(n[-1]))
    canvas = _Canvas(float(n[-1]))
    figs: dict[str, bytes] = {}

    calls = column(rows, "expert_calls")
    fig, ax = canvas.axes("Share of items sent to the expert", "expert share")
    ax.plot(n, _window(n, calls, w), color=_EXPERT, lw=1.8, label=f"last {w:,} items")
    ax.plot(n, calls / n, color=_CUMUL, lw=1.4, ls="--", label="cumulative")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(0, 1.02)
    canvas.legend_below(ax)
    figs["expert_share"] = _png(fig)

    made = {
        "agreement": _agreement(canvas, rows, n, summary.get("target"), learner_window),
        "accuracy": _accuracy(canvas, rows, n, summary),
        "cost": _cost(canvas, rows, n),
    }
    figs.update({k: v for k, v in made.items() if v is not None})

    names = list(summary.get("stage_share") or {})
    if names:
        fig, ax = canvas.axes(f"Who answered (last {w:,} items)", "share of items")
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
        canvas.legend_below(ax)
        figs["stages"] = _png(fig)
    return figs


__all__ = ["column", "has_bound", "stream_figures", "window_size"]
