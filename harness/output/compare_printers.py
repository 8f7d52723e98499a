"""A comparison as text: a markdown table (only the columns that vary, the common ones in
a line above), CSV and JSON rows, and the --fail-on gate's failure lines."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from harness.output.compare import Comparison, Row
from harness.output.printers import md_table, rows_to_csv


def fmt_num(v: float | None) -> str:
    if v is None:
        return ""
    a = abs(v)
    return f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"


def _fmt_value(v: float | None, sd: float | None) -> str:
    return fmt_num(v) + (f" ± {fmt_num(sd)}" if sd is not None else "")


def _fmt_change(r: Row) -> str:
    if r.change is None:
        return ""
    return f"{r.change:+.1f}%" if r.change_unit == "%" else f"{r.change:+.1f} pt"


def _fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.2g}" if p >= 0.001 else "<0.001"


def _fmt_ci(r: Row) -> str:
    if r.ci_low is None or r.why_untested:  # an interval from samples too few to test is no evidence
        return ""
    if r.kind == "accuracy":
        return f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}]" + (" pt" if r.change_unit == "pt" else "")
    return f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"


def _verdict_cell(r: Row, md: bool) -> str:
    text = r.verdict + (" (gate)" if r.gate_failed else "")
    return f"**{text}**" if md and r.flagged else text


def table_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    setting_keys = sorted({k for r in c.rows for k in r.settings})
    header = ["head", "model", "backend", *setting_keys, "test", "metric"]
    if c.axis:
        header += [f"{c.axis} base", f"{c.axis} head"]
    header += ["base value", "head value", "change", "threshold", "p-value", "95% CI", "verdict"]
    rows = []
    for r in c.rows:
        cells = [r.head_label, r.model, r.backend, *[r.settings.get(k, "") for k in setting_keys], r.test,
                 r.metric + (f" ({r.unit})" if r.unit else "")]
        if c.axis:
            cells += [r.axis_base or "", r.axis_head or ""]
        cells += [_fmt_value(r.base, r.base_sd), _fmt_value(r.head, r.head_sd), _fmt_change(r), r.threshold,
                  _fmt_p(r.p), _fmt_ci(r), r.verdict + (" (gate)" if r.gate_failed else "")]
        rows.append(cells)
    return header, rows


def _summary(rows: list[Row]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.verdict] += 1
    order = ["regressed", "improved", "not significant", "within threshold", "untested", "not compared"]
    return ", ".join(f"{counts[v]} {v}" for v in order if counts[v])


def markdown(comparisons: list[Comparison]) -> str:
    out = []
    for c in comparisons:
        header, rows = table_rows(c)
        constant = {i for i in range(len(header)) if len({row[i] for row in rows}) <= 1}
        keep_always = {header.index(h) for h in ("test", "metric", "base value", "head value", "change", "verdict")}
        shown = [i for i in range(len(header)) if i not in constant or i in keep_always]
        title = f"**harness compare** base → {c.head_label}"
        if c.axis:
            b, h = c.axis_values or ([], [])
            title += f": **{c.axis}** {', '.join(b)} → {', '.join(h)}"
        else:
            title += ": same configurations"
        out.append(title)
        skip = {"head", "p-value", "95% CI", f"{c.axis} base", f"{c.axis} head"}
        fixed = [f"{header[i]} {rows[0][i]}" for i in sorted(constant - keep_always) if rows and rows[0][i]
                 and header[i] not in skip]
        if fixed:
            out.append("")
            out.append("common: " + " · ".join(fixed))
        out.append("")
        out.append(f"{_summary(c.rows)}.")
        for w in c.warnings:
            out.append("")
            out.append(f"> warning: {w}")
        out.append("")
        right = {n for n, i in enumerate(shown) if header[i] in ("base value", "head value", "change", "p-value")}
        md_rows = []
        for row_obj, row in zip(c.rows, rows):
            cells = [row[i] for i in shown]
            vi = [header[i] for i in shown].index("verdict")
            cells[vi] = _verdict_cell(row_obj, md=True)
            md_rows.append(cells)
        out.append(md_table([header[i] for i in shown], md_rows, right))
        stat = ("two-sided Mann-Whitney U on raw samples" if c.stat == "mwu" else "bootstrap interval of head/base excluding 1")
        out.append("")
        out.append(f"Flagged only when the change exceeds its threshold and is significant at alpha {c.alpha:g} "
                   f"(performance: {stat}; accuracy: change against the combined stderr). "
                   "95% CI: bootstrap interval of head/base for performance, of the change for accuracy.")
        untested: dict[str, list[str]] = {}
        for r in c.rows:
            if r.why_untested:
                untested.setdefault(r.why_untested, []).append(f"{r.test} {r.metric}")
        for why, items in untested.items():
            out.append("")
            out.append(f"untested ({len(items)}), {why}: " + "; ".join(items[:10]) + (" ..." if len(items) > 10 else ""))
        for title, items in (("only in base", c.only_base), ("only in head", c.only_head)):
            if items:
                out.append("")
                out.append(f"{title} ({len(items)}): " + "; ".join(items[:10]) + (" ..." if len(items) > 10 else ""))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _row_dict(c: Comparison, r: Row) -> dict[str, Any]:
    d = asdict(r)
    d["axis"] = c.axis
    d.update({f"setting_{k}": v for k, v in d.pop("settings").items()})
    return d


def csv_text(comparisons: list[Comparison]) -> str:
    rows = [_row_dict(c, r) for c in comparisons for r in c.rows]
    return rows_to_csv(rows)


def json_text(comparisons: list[Comparison]) -> str:
    data = []
    for c in comparisons:
        d = {k: v for k, v in asdict(c).items() if k != "rows"}
        d["rows"] = [asdict(r) for r in c.rows]
        data.append(d)
    return json.dumps(data[0] if len(data) == 1 else data, indent=2)


def gate_failures(comparisons: list[Comparison]) -> list[str]:
    fails = []
    for c in comparisons:
        for r in c.rows:
            if r.gate_failed:
                fails.append(f"{r.test} {r.metric} {_fmt_change(r)} (p={_fmt_p(r.p)}) fails --fail-on {r.gate}")
        fails.extend(w for w in c.warnings if w.startswith("--fail-on ") and "missing from head" in w)
    return fails


PRINTERS = {"md": markdown, "csv": csv_text, "json": json_text}
