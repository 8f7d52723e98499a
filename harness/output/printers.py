"""Markdown, CSV and JSON from run records; one row shape, many printers.

The Markdown table follows llama-bench: model, size, params, backend, threads, test,
t/s as mean ± stddev. A settings column appears only when its value varies across
rows or differs from the backend's default.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any, Callable

from harness.core.record import RunRecord

if TYPE_CHECKING:
    from harness.core.backend import SettingMeta

FORMATS = ("md", "csv", "json")
# what records print as (harness bench -o as in llama-bench, show, eval, load): also JSON Lines
# (one record a line) and SQL (llama-bench's CREATE TABLE + INSERT statements, for sqlite3)
RECORD_FORMATS = ("md", "csv", "json", "jsonl", "sql")

def _params_label(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def model_label(r: RunRecord) -> str:
    """The model column of a table that has a backend column of its own (harness.output.labels)."""
    from harness.output.labels import model_name

    return model_name(r)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return "" if v is None else str(v)


def setting_columns(records: list[RunRecord]) -> dict[str, SettingMeta]:
    """The settings the records' backends declare worth a column (harness.core.backend.setting),
    in the registry's order of backends and each backend's field order."""
    from harness.core.registry import settings_metadata

    return {k: m for k, m in settings_metadata(r.backend.name for r in records).items() if m.column}


def _shown_settings(records: list[RunRecord]) -> list[SettingMeta]:
    shown = []
    for key, meta in setting_columns(records).items():
        values = [r.backend.settings.get(key) for r in records if key in r.backend.settings]
        if not values:
            continue
        varies = len({json.dumps(v) for v in values}) > 1
        off_default = meta.default not in (None, 0) and any(v != meta.default for v in values)
        if meta.column == "always" or varies or off_default:
            shown.append(meta)
    return shown


def md_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def perf_markdown(records: list[RunRecord]) -> str:
    settings = _shown_settings(records)
    show_dev = any((r.backend.device or "cpu") != "cpu" for r in records)
    show_roof = any(p.roofline_fraction is not None for r in records for p in r.perf)
    header = ["model", "size", "params", "backend"] + (["dev"] if show_dev else []) + \
        [m.label for m in settings] + ["test", "t/s", "ttft ms", "peak RSS MiB"] + \
        (["% of roofline"] if show_roof else [])
    right = {1, 2} | set(range(len(header) - (4 if show_roof else 3), len(header)))
    rows = []
    for r in records:
        base = [model_label(r), f"{r.model.size_bytes / 2**20:.2f} MiB", _params_label(r.model.parameters), r.backend.name]
        base += [r.backend.device or "cpu"] if show_dev else []
        base += [_fmt(r.backend.settings.get(m.name)) for m in settings]
        for p in r.perf:
            ttft = f"{p.ttft_ms_mean:.2f} ± {p.ttft_ms_stddev:.2f}" if p.ttft_ms_mean is not None else ""
            rss = f"{p.peak_rss_mib:.1f}" if p.peak_rss_mib is not None else ""
            roof = [f"{100 * p.roofline_fraction:.1f}" if p.roofline_fraction is not None else ""] if show_roof else []
            rows.append(base + [p.test, f"{p.tps_mean:.2f} ± {p.tps_stddev:.2f}", ttft, rss] + roof)
        for f in r.failures:
            rows.append(base + ["FAILED", f.cause, "", ""] + ([""] if show_roof else []))
    return md_table(header, rows, right)


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def load_markdown(records: list[RunRecord]) -> str:
    """One row per load point of `harness load` (vLLM's serving metrics; medians, TTFT p99;
    a tail percentile only from samples enough for it)."""
    from harness.output.significance import percentile_samples

    show_goodput = any(p.goodput_per_s is not None for r in records for p in r.load)
    # --percentile-metrics / --metric-percentiles: one column per metric and percentile asked for
    extra: list[tuple[str, str]] = []
    for r in records:
        for p in r.load:
            extra.extend((m, q) for m, qs in p.percentiles.items() for q in qs if (m, q) not in extra)
    header = ["model", "server", "api", "load", "in", "out", "ok/sent", "req/s", "out tok/s", "total tok/s",
              "TTFT med ms", "TTFT p99 ms", "TPOT med ms", "ITL med ms", "e2e med ms"] + (["goodput/s"] if show_goodput else []) + \
        [f"{m.removesuffix('_ms').upper()} {q} ms" for m, q in extra]
    right = set(range(4, len(header)))
    rows = []
    blanked = False

    def tail(p, metric: str, q: str, value: float | None) -> str:
        nonlocal blanked
        if value is not None and p.sample_count(metric) < percentile_samples(float(q.removeprefix("p"))):
            blanked = True
            return ""
        return _ms(value)

    for r in records:
        label = model_label(r)
        server = r.backend.settings.get("served_by") or "remote"
        for p in r.load:
            row = [label, server, p.api, p.label, _fmt(p.input_len), str(p.output_len), f"{p.completed}/{p.requests}",
                   f"{p.request_throughput_per_s:.2f}", f"{p.output_tokens_per_s:.2f}", f"{p.total_tokens_per_s:.2f}",
                   _ms(p.ttft_ms_median), tail(p, "ttft_ms", "p99", p.ttft_ms_p99), _ms(p.tpot_ms_median),
                   _ms(p.itl_ms_median), _ms(p.e2el_ms_median)]
            if show_goodput:
                row.append("" if p.goodput_per_s is None else f"{p.goodput_per_s:.2f}")
            row += [tail(p, m, q, p.percentiles.get(m, {}).get(q)) for m, q in extra]
            rows.append(row)
    notes = [f"run {r.run_id} is incomplete: the harness was stopped outright after {len(r.load)} load point"
             f"{'s' if len(r.load) != 1 else ''}; these are the points it finished"
             for r in records if r.load and r.status == "incomplete"]
    if blanked:  # the figures stay in the record (--format json or csv), as vllm bench serve's would
        notes.append("a blank tail percentile had fewer samples than it needs (p90 10, p99 100); with fewer it lies "
                     "between the two slowest and says no more than the maximum: give --requests 100 or more")
    return "\n\n".join([md_table(header, rows, right)] + notes)


def _ordered_accuracy(r: RunRecord) -> list[tuple[int, Any]]:
    """Each top-level task or group, then what it contains (depth for indenting), as lm-eval lists them."""
    children: dict[str | None, list] = {}
    for a in r.accuracy:
        children.setdefault(a.parent, []).append(a)
    out: list[tuple[int, Any]] = []
    seen: set[str] = set()

    def walk(parent: str | None, depth: int) -> None:
        for a in children.get(parent, []):
            out.append((depth, a))
            if a.task not in seen:
                seen.add(a.task)
                walk(a.task, depth + 1)

    walk(None, 0)
    return out


def _eval_cost_line(r: RunRecord) -> str | None:
    from harness.output.labels import model_label, recalled_note

    e = r.evaluation
    if e is None or e.cost is None:
        return None
    c = e.cost
    recalled = recalled_note(r)
    saved = f" ({100 * c.tokens_saved_by_reuse / c.tokens_without_reuse:.0f}%)" if c.tokens_without_reuse else ""
    load = f" (model load {c.model_load_s:.2f} s)" if c.model_load_s is not None else ""
    line = (f"{model_label(r)}: eval wall {c.wall_s:.1f} s{load}, {c.tokens_evaluated:,} tokens evaluated, "
            f"{c.tokens_saved_by_reuse:,} saved by context reuse{saved}, {c.tokens_generated:,} generated; lm-eval {e.lm_eval_version}")
    if recalled:
        line = (f"{model_label(r)}: {recalled}; its eval wall ({c.wall_s:.1f} s) and token counts are not a speed "
                f"(rerun with --no-cache to measure); lm-eval {e.lm_eval_version}")
    if e.skipped:
        line += "\nskipped: " + "; ".join(f"{t} ({why})" for t, why in e.skipped.items())
    return line


def _groups_first(r: RunRecord) -> list[tuple[int, Any]]:
    """Benchmark and group rows (top level) first, then each one's subjects and subtasks."""
    ordered = _ordered_accuracy(r)
    return [x for x in ordered if x[0] == 0] + [x for x in ordered if x[0] > 0]


def accuracy_markdown(records: list[RunRecord]) -> str:
    """lm-eval's familiar table: task, filter, n-shot, metric, value ± stderr; group and
    benchmark rows first, a score from fewer than MIN_DOCS documents labelled a smoke test."""
    from harness.output.labels import model_label as full_label, recalled_note, smoke_label

    header = ["model", "task", "filter", "n-shot", "docs", "metric", "value", "± stderr", "note"]
    right = {len(header) - 6, len(header) - 5, len(header) - 3, len(header) - 2}
    rows = []
    notes = []
    for r in records:
        if not r.accuracy:
            continue
        recalled = recalled_note(r)
        for depth, a in _groups_first(r):
            name = ("  " * depth + "- " if depth else "") + (a.alias or a.task).strip()
            note = "; ".join(x for x in (smoke_label(a.n), recalled if depth == 0 else None) if x)
            row = [name, a.filter, _fmt(a.num_fewshot), _fmt(a.n), a.metric,
                   "" if a.value is None else f"{a.value:.4f}", "" if a.stderr is None else f"± {a.stderr:.4f}", note]
            rows.append([full_label(r)] + row)
        line = _eval_cost_line(r)
        if line:
            notes.append(line)
    return "\n\n".join([md_table(header, rows, right)] + notes)


def markdown(records: list[RunRecord]) -> str:
    """The perf table (llama-bench style), then the load table when there are load points,
    then the accuracy table when there are accuracy results."""
    has_load = any(r.load for r in records)
    has_accuracy = any(r.accuracy for r in records)
    parts = []
    if not (has_load or has_accuracy) or any(r.perf or r.failures for r in records):
        parts.append(perf_markdown(records))
    if has_load:
        parts.append(load_markdown(records))
    if has_accuracy:
        parts.append(accuracy_markdown(records))
    return "\n\n".join(parts)


def flat_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        base = {
            "run_id": r.run_id, "created_at": r.created_at, "status": r.status,
            "model": model_label(r), "model_ref": r.model.ref, "model_sha256": r.model.sha256,
            "model_size_bytes": r.model.size_bytes, "model_parameters": r.model.parameters,
            "backend": r.backend.name, "backend_version": r.backend.version,
            **{f"setting_{k}": _fmt(v) for k, v in r.backend.settings.items()},
        }
        for p in r.perf:
            d = p.model_dump(exclude={"unavailable"})
            for k in ("samples_tps", "samples_ms", "samples_ttft_ms"):
                d[k] = ";".join(f"{x:.6g}" for x in (d[k] or []))
            rows.append({**base, **d})
        for p in r.load:
            d = p.model_dump(exclude={"samples", "unavailable", "label", "slo", "error_kinds", "percentiles"})
            d.update({f"{m}_{q}": v for m, qs in p.percentiles.items() for q, v in qs.items()})
            d["error_kinds"] = ";".join(f"{k}:{v}" for k, v in p.error_kinds.items())
            d["slo"] = ";".join(f"{k}={v:g}" for k, v in p.slo.items())
            rows.append({**base, "test": f"load {p.label}", **d})
        cost = r.evaluation.cost if r.evaluation else None
        from harness.output.labels import recalled_note, smoke_label

        recalled = recalled_note(r)
        for a in r.accuracy:
            d = a.model_dump()
            d.update(smoke_test=smoke_label(a.n) or "", recalled_from_cache=recalled or "")
            if cost is not None:
                d.update(eval_wall_s=cost.wall_s, eval_tokens_evaluated=cost.tokens_evaluated,
                         eval_tokens_saved_by_reuse=cost.tokens_saved_by_reuse)
            rows.append({**base, "test": f"accuracy {a.task}", **d})
        for f in r.failures:
            rows.append({**base, "test": "FAILED", "failure": f.cause})
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    """Flat rows as CSV; the header is the union of their keys in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def csv_text(records: list[RunRecord]) -> str:
    rows = flat_rows(records)
    return rows_to_csv(rows)


def json_text(records: list[RunRecord]) -> str:
    """Always a list, one record or many, so a reader needs one code path."""
    return json.dumps([json.loads(r.model_dump_json()) for r in records], indent=2)


def jsonl_text(records: list[RunRecord]) -> str:
    return "\n".join(r.model_dump_json() for r in records)


def _sql_value(v: Any) -> str:
    if v is None or v == "":
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def rows_to_sql(rows: list[dict], table: str = "test") -> str:
    """llama-bench's -o sql: CREATE TABLE IF NOT EXISTS, then one INSERT per row (sqlite3 reads it)."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    if not fields:
        return ""
    types = {}
    for f in fields:
        values = [row.get(f) for row in rows if row.get(f) not in (None, "")]
        if values and all(isinstance(v, int) for v in values):
            types[f] = "INTEGER"
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            types[f] = "REAL"
        else:
            types[f] = "TEXT"
    lines = [f"CREATE TABLE IF NOT EXISTS {table} ("] + \
        [f"  {f} {types[f]}{',' if i < len(fields) - 1 else ''}" for i, f in enumerate(fields)] + [");"]
    for row in rows:
        lines.append(f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join(_sql_value(row.get(f)) for f in fields)});")
    return "\n".join(lines)


def sql_text(records: list[RunRecord]) -> str:
    return rows_to_sql(flat_rows(records))


PRINTERS: dict[str, Callable[[list[RunRecord]], str]] = {"md": markdown, "csv": csv_text, "json": json_text,
                                                          "jsonl": jsonl_text, "sql": sql_text}


def table_text(fmt: str, header: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    """A plain table (models, backends, trend, env) in any of FORMATS: JSON is a list of objects."""
    if fmt == "json":
        return json.dumps([dict(zip(header, r)) for r in rows], indent=2)
    if fmt == "csv":
        return rows_to_csv([dict(zip(header, r)) for r in rows]).rstrip("\n")
    return md_table(header, [["" if c is None else str(c) for c in r] for r in rows], set(right))


# ------------------------------------------------------------- sweeps (harness sweep)


def sweep_markdown(summary) -> str:
    """A sweep summary: one row per cell with its status, then the counts."""
    counts = ", ".join(f"{v} {k}" for k, v in summary.counts().items())
    head = f"sweep {summary.sweep_id} ({summary.status}{', by ' + summary.interrupted_by if summary.interrupted_by else ''}): " \
        f"{len(summary.cells)} cells: {counts}"
    rows = [[str(c.index), c.label, c.status + (" (kept)" if c.reused else ""),
             "" if c.wall_s is None else f"{c.wall_s:.1f}", c.cause or "", c.result_file or ""] for c in summary.cells]
    header = ["#", "cell", "status", "wall s", "cause", "result file"]
    if any(c.node for c in summary.cells):  # a --ray sweep: which node ran which cell
        header.append("node")
        for row, c in zip(rows, summary.cells):
            row.append(f"{c.node['hostname']} {c.node['ip']} {c.node['node_id'][:12]}" if c.node else "")
    return head + "\n\n" + md_table(header, rows, {3})


def sweep_rows(summary) -> list[dict[str, Any]]:
    return [{"sweep_id": summary.sweep_id, "index": c.index, "label": c.label, "kind": c.kind, "model": c.model_ref,
             "model_sha256": c.model_sha256, "backend": c.backend, "status": c.status, "reused": c.reused,
             "attempts": c.attempts, "wall_s": c.wall_s, "cause": c.cause, "result_file": c.result_file,
             **{f"node_{k}": v for k, v in (c.node or {}).items()},
             **{f"setting_{k}": _fmt(v) for k, v in c.settings.items()}} for c in summary.cells]


def sweep_csv(summary) -> str:
    """The cells of one sweep summary, or of a list of them, as one CSV."""
    rows = [row for s in (summary if isinstance(summary, list) else [summary]) for row in sweep_rows(s)]
    return rows_to_csv(rows)


def sweep_json(summary) -> str:
    return json.dumps(json.loads(summary.model_dump_json()), indent=2)


SWEEP_PRINTERS: dict[str, Callable[[Any], str]] = {"md": sweep_markdown, "csv": sweep_csv, "json": sweep_json}


def sweep_plan_rows(plan) -> list[dict[str, Any]]:
    """`harness sweep --dry-run --format csv|json`: one row per cell, with what --resume does with it."""
    rows = []
    for c in plan.cells:
        action = "keep" if c.key in plan.resume.kept else "rerun" if c.key in plan.resume.rerun else "run"
        rows.append({"index": c.index, "kind": c.kind, "label": c.label, "model": c.model.ref, "backend": c.backend,
                     "timeout_s": c.timeout_s, "estimate_s": None if action == "keep" else c.estimate_s,
                     "estimate_source": c.estimate_source, "action": action, "key": c.key})
    return rows


def sweep_plan_text(plan, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(sweep_plan_rows(plan), indent=2)
    if fmt == "csv":
        return rows_to_csv(sweep_plan_rows(plan)).rstrip("\n")
    return sweep_plan_markdown(plan)


def sweep_plan_markdown(plan) -> str:
    """`harness sweep --dry-run`: every cell with its timeout, its estimate and what --resume does with it."""
    from harness.execution.cell_estimates import format_duration

    rows = []
    for c in plan.cells:
        if c.key in plan.resume.kept:
            action = "keep (finished)"
        elif c.key in plan.resume.rerun:
            action = "run again"
        else:
            action = "run"
        est = "-" if c.key in plan.resume.kept else format_duration(c.estimate_s) + ("" if c.estimate_source == "measured" else " *")
        rows.append([str(c.index), c.kind, c.label, f"{c.timeout_s:g}", est, action])
    table = md_table(["#", "kind", "cell", "timeout s", "estimate", "action"], rows, {3, 4})
    to_run = sum(1 for c in plan.cells if c.key not in plan.resume.kept)
    unknown = plan.unknown_estimates
    total = f"about {format_duration(plan.total_estimate_s)}" + (f" plus {unknown} cell(s) of unknown length" if unknown else "")
    notes = [f"{len(plan.cells)} cells, {to_run} to run, {total}; results in {plan.out_dir}",
             "* estimated from the model's size and the thread count (rough); measured speeds from earlier "
             "results in the folder replace the guess"]
    notes += [f"backend {name} left out of auto: {why}" for name, why in plan.skipped_backends.items()]
    return table + "\n\n" + "\n".join(notes)
