"""`harness trend HISTORY`: each figure of the nightly history, night by night, as a table and a plot."""

from __future__ import annotations

from collections import defaultdict

from harness.core.record import RunRecord
from harness.output.compare import file_label, fmt_setting, join_key, relative_change
from harness.output.compare_printers import fmt_num
from harness.output.measurements import measurements


def _trend_keys(backend: str) -> set[str]:
    from harness.core.registry import settings_metadata

    return {k for k, m in settings_metadata([backend]).items() if m.trend}


def trend_series(records: list[RunRecord], last: int = 14) -> tuple[list[str], list[tuple[list[str], list[float | None]]]]:
    """The nights (days records were created, the last ``last``) and, per series, its labels
    (model, backend, settings, test, metric) and its mean value each night (None: not run)."""
    series: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[tuple, list[str]] = {}
    trend_keys: dict[str, set[str]] = {}  # by backend
    for r in records:
        day = r.created_at[:10]
        for m in measurements(r):
            if m.metric not in ("pp_tps", "tg_tps", "pg_tps", "ttft_ms", "peak_rss_mib", "peak_vram_mib") and m.kind != "accuracy":
                continue
            key = join_key(m, None)
            series[key][day].extend(m.samples if m.kind != "accuracy" else [m.value * 100 if 0 <= m.value <= 1 else m.value])
            settings = ", ".join(f"{k}={fmt_setting(v)}" for k, v in sorted(r.backend.settings.items())
                                 if k in trend_keys.setdefault(r.backend.name, _trend_keys(r.backend.name)))
            labels[key] = [file_label(r), r.backend.name, settings, m.test, m.metric + (f" ({m.filter})" if m.filter else "")]
    days = sorted({d for s in series.values() for d in s})[-last:]
    out = []
    for key, by_day in sorted(series.items(), key=lambda kv: labels[kv[0]]):
        out.append((labels[key], [(sum(by_day[d]) / len(by_day[d])) if by_day.get(d) else None for d in days]))
    return days, out


def trend(records: list[RunRecord], last: int = 14) -> tuple[list[str], list[list[str]]]:
    """Metric values per night (the day each record was created), newest last."""
    days, series = trend_series(records, last)
    header = ["model", "backend", "settings", "test", "metric", *days, "last vs previous"]
    rows = []
    for labels, vals in series:
        present = [v for v in vals if v is not None]
        change = relative_change(present[-2], present[-1]) if len(present) >= 2 else None
        rows.append(labels + [fmt_num(v) for v in vals] + [f"{change:+.1f}%" if change is not None else ""])
    return header, rows


def trend_png(records: list[RunRecord], last: int = 14) -> bytes:
    """The trend as a plot: a panel per metric, a line per model/backend/settings/test, nights on x."""
    from harness.output.plots import trend_lines

    days, series = trend_series(records, last)
    return trend_lines(days, [(" ".join(x for x in labels[:4] if x), labels[4], vals) for labels, vals in series])
