"""The report's plots, drawn with matplotlib (the optional `report` extra) as PNG bytes.

Figures are built with matplotlib.figure.Figure, not pyplot: no global state, no GUI
backend, safe to call many times in one process.
"""

from __future__ import annotations

import io
from typing import Sequence

from harness.core.errors import HarnessError

COLORS = {"measured open": "#1f77b4", "measured closed": "#d62728", "reported": "#d9d9d9"}


def _figure(width: float = 7.5, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HarnessError("harness report draws its plots with matplotlib: pip install 'openbench-harness[report]'") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


def _wrap(label: str, width: int = 24) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def throughput_vs_concurrency(series: dict[str, list[tuple[float, float]]]) -> bytes:
    fig, ax = _figure()
    for label, points in series.items():
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_wrap(label, 50))
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Serving throughput against concurrency")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def latency_percentiles(groups: Sequence[tuple[str, dict[str, float]]], title: str, ylabel: str) -> bytes:
    """Grouped bars: one group per configuration, one bar per percentile that any of them has
    (a percentile is left out where there are too few samples for it); the title names them."""
    fig, ax = _figure(width=max(6.0, 1.6 * len(groups) + 2), height=4.5)
    names = [n for n in ("p50", "p90", "p99") if any(n in vals for _, vals in groups)] or ["p50"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        # a percentile left out (too few samples for it) is no bar, not a bar of zero
        ax.bar(xs, [vals.get(name, float("nan")) for _, vals in groups], width, label=name)
    ax.set_xticks(range(len(groups)), [_wrap(label) for label, _ in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({' / '.join(names)})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_vs_memory(points: Sequence[tuple[str, str, float, float, float | None]], memory_label: str) -> bytes:
    """points: (configuration label, task label, memory MiB, accuracy %, stderr %)."""
    fig, ax = _figure()
    markers = "osD^v<>PX*"
    tasks = sorted({p[1] for p in points})
    for t_i, task in enumerate(tasks):
        mine = [p for p in points if p[1] == task]
        ax.errorbar([p[2] for p in mine], [p[3] for p in mine], yerr=[p[4] or 0.0 for p in mine],
                    fmt=markers[t_i % len(markers)], capsize=3, label=task)
        for p in mine:
            ax.annotate(p[0], (p[2], p[3]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(memory_label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against memory")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def benchmark_scores(title: str, bars: Sequence[tuple[str, float, tuple[float, float] | None, str, bool]]) -> bytes:
    """One benchmark: bars (label, score %, 95% interval or None, kind, smoke test).

    Measured bars are solid with interval whiskers; published figures are pale and
    hatched, with no whisker (none is published); a smoke-test bar is drawn faded."""
    from matplotlib.patches import Patch

    fig, ax = _figure(width=7.0, height=max(2.2, 0.42 * len(bars) + 1.5))
    ys = list(range(len(bars)))[::-1]
    for y, (label, value, ci, kind, smoke) in zip(ys, bars):
        reported = kind == "reported"
        err = None if ci is None else [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]
        ax.barh(y, value, color=COLORS.get(kind, "#777777"), alpha=0.35 if smoke else 1.0,
                hatch="///" if reported else None, edgecolor="#555555" if reported else "black", linewidth=0.6)
        if err is not None:
            ax.errorbar(value, y, xerr=err, fmt="none", ecolor="black", capsize=3, linewidth=1)
        text = f"{value:.1f}" + (f" [{ci[0]:.0f}–{ci[1]:.0f}]" if ci else "") + (" · smoke test" if smoke else "")
        # inside the bar's left end, on a white box: readable whatever the bar's length
        ax.text(1.0, y, text, va="center", ha="left", fontsize=7,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
    ax.set_yticks(ys, [_wrap(b[0], 34) for b in bars], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("score (%) · whiskers: 95% interval")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    kinds = []
    for kind, name in (("measured open", "measured here: open"), ("measured closed", "measured here: closed"),
                       ("reported", "published, not measured here")):
        if any(b[3] == kind for b in bars):
            kinds.append(Patch(facecolor=COLORS[kind], hatch="///" if kind == "reported" else None,
                               edgecolor="#555555", label=name))
    ax.legend(handles=kinds, fontsize=7, loc="lower right")
    return _png(fig)


def trend_lines(days: Sequence[str], series: Sequence[tuple[str, str, Sequence[float | None]]]) -> bytes:
    """`harness trend --png`: one panel per metric, one line per (label, metric) series, nights on x;
    a night a series did not run is a gap in its line."""
    metrics = list(dict.fromkeys(metric for _, metric, _ in series))
    if not metrics:
        raise HarnessError("nothing to plot: the history holds no speed or accuracy figures")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HarnessError("harness trend --png draws with matplotlib: pip install 'openbench-harness[report]'") from None
    fig = Figure(figsize=(8.0, 2.6 * len(metrics)), dpi=100, layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    x = list(range(len(days)))
    for ax, metric in zip(axes, metrics):
        for label, m, values in series:
            if m != metric:
                continue
            ax.plot(x, [float("nan") if v is None else v for v in values], marker="o", label=_wrap(label, 60))
        ax.set_title(metric)
        ax.set_xticks(x, list(days), rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _png(fig)
