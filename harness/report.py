"""`harness report RUN... --html FILE`: one self-contained HTML page, PNG plots beside it.

The page needs no network: styles are inline and plots are embedded as base64 PNG (the
same PNGs are written beside the HTML for pull-request comments). Sections: runs, speed
and latency percentiles, serving throughput against concurrency, accuracy against memory,
open against closed (measured open models, closed models measured through the
OpenAI-compatible backend, and published scores from harness/data with source and
protocol), an openness card per model, and cost per million tokens.

Reported numbers come only from the reference data and are always labelled "reported";
a reported number whose protocol differs from the measured one says how.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.cost import ApiPrice, CostInputs, cost_per_mtok, measured_power_w
from harness.environment import hardware_key
from harness.errors import ConfigError
from harness.record import RunRecord
from harness.reference import (
    UNKNOWN,
    Openness,
    Protocol,
    PublishedScores,
    load_openness,
    load_published_scores,
    osi_approval,
    protocol_differences,
)

TEMPLATE = Path(__file__).resolve().parent / "data" / "report.html.j2"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    alt: str
    file: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class Report:
    title: str
    generated_at: str
    records: list[RunRecord]
    sources: list[str]
    sections: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, Plot] = field(default_factory=dict)


# ---------------------------------------------------------------------------- labels


def _fmt_setting(v: Any) -> str:
    return ("1" if v else "0") if isinstance(v, bool) else str(v)


def varying_settings(records: list[RunRecord]) -> list[str]:
    """Settings worth naming in a label (the printers' columns) whose value differs between
    records of the same backend (each backend has its own settings)."""
    from harness.printers import SETTING_COLUMNS

    varying = set()
    for backend in {r.backend.name for r in records}:
        mine = [r for r in records if r.backend.name == backend]
        for k in {k for r in mine for k in r.backend.settings}:
            if k in SETTING_COLUMNS and len({json.dumps(r.backend.settings.get(k), sort_keys=True) for r in mine}) > 1:
                varying.add(k)
    return sorted(varying)


def model_short(r: RunRecord) -> str:
    m = r.model
    if m.format == "openai-api":
        return m.name or m.ref
    base = m.ref if (m.ref and "/" not in m.ref and not m.ref.endswith(".gguf")) else Path(m.path).stem
    return f"{base} {m.quantization}" if m.quantization and m.quantization.lower() not in base.lower() else base


def config_label(r: RunRecord, varying: list[str]) -> str:
    from harness.printers import SETTING_COLUMNS

    parts = [model_short(r), r.backend.name]
    if r.backend.settings.get("base_url"):  # a model behind a server: say which
        host = urlparse(str(r.backend.settings["base_url"]).split(" ")[0]).hostname
        served = r.backend.settings.get("served_by")
        parts[-1] += f"@{host}" + (f" ({served})" if served else "")
    if r.backend.device and r.backend.device != "cpu":
        parts.append(r.backend.device)
    shown = [f"{SETTING_COLUMNS.get(k, k)}={_fmt_setting(r.backend.settings[k])}" for k in varying
             if k in r.backend.settings and (k != "n_threads_batch" or "n_threads" not in varying)]
    return " · ".join(parts + ([" ".join(shown)] if shown else []))


def access_of(r: RunRecord, openness: Openness) -> str:
    """'open' for a local weights file; for a model behind an HTTP API, 'closed' unless the
    server is on this machine or the model's name belongs to an open family."""
    if r.model.format != "openai-api":
        return "open"
    host = urlparse(str(r.backend.settings.get("base_url", ""))).hostname or ""
    if host in LOOPBACK or openness.family_for(r.model.name, r.model.ref):
        return "open"
    return "closed"


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q))


def percentiles(xs: list[float]) -> dict[str, float]:
    return {"p50": _pct(xs, 50), "p90": _pct(xs, 90), "p99": _pct(xs, 99)} if xs else {}


# ---------------------------------------------------------------------------- sections


def speed_section(records: list[RunRecord], varying: list[str]) -> dict[str, Any]:
    rows, ttft_groups, tpot_groups, roofline = [], [], [], []
    for r in records:
        label = config_label(r, varying)
        for p in r.perf:
            if p.roofline_fraction is not None:
                roofline.append(f"{label} {p.test}: {p.tps_mean:.1f} t/s is {100 * p.roofline_fraction:.1f}% of the "
                                f"memory-bandwidth roofline of {p.roofline_tps:.0f} t/s ({p.roofline_method})")
            if p.n_gen:
                per_token = [ms / p.n_gen for ms in p.samples_ms]
                lat = percentiles(per_token)
                lat_kind = "ms per output token"
                tpot_groups.append((f"{label} {p.test}", lat))
            else:
                lat = percentiles(p.samples_ttft_ms or [])
                lat_kind = "TTFT ms"
                if lat:
                    ttft_groups.append((f"{label} {p.test}", lat))
            rows.append({
                "config": label, "test": p.test, "tps": f"{p.tps_mean:.2f} ± {p.tps_stddev:.2f}", "n": len(p.samples_tps),
                "latency_kind": lat_kind, **{k: f"{v:.2f}" for k, v in lat.items()},
                "peak_rss": f"{p.peak_rss_mib:.1f}" if p.peak_rss_mib is not None else "",
                "peak_vram": f"{p.peak_vram_mib:.1f}" if p.peak_vram_mib is not None else "",
            })
        for pt in r.load:
            ok = [s for s in pt.samples if s.ok]
            ttft = percentiles([s.ttft_ms for s in ok if s.ttft_ms is not None])
            tpot = percentiles([s.tpot_ms for s in ok if s.tpot_ms is not None])
            if ttft:
                ttft_groups.append((f"{label} load {pt.label}", ttft))
            if tpot:
                tpot_groups.append((f"{label} load {pt.label}", tpot))
    return {"rows": rows, "ttft_groups": ttft_groups, "tpot_groups": tpot_groups, "roofline": roofline}


def load_section(records: list[RunRecord], varying: list[str]) -> dict[str, Any]:
    rows, series = [], {}
    for r in records:
        label = config_label(r, varying)
        for pt in r.load:
            rows.append({
                "config": label, "point": pt.label, "api": pt.api, "lengths": f"{pt.input_len}/{pt.output_len}",
                "completed": f"{pt.completed}/{pt.requests}", "errors": pt.errors,
                "req_s": f"{pt.request_throughput_per_s:.2f}", "out_tps": f"{pt.output_tokens_per_s:.1f}",
                "ttft": _opt(pt.ttft_ms_median), "ttft_p99": _opt(pt.ttft_ms_p99),
                "tpot": _opt(pt.tpot_ms_median), "tpot_p99": _opt(pt.tpot_ms_p99),
                "goodput": _opt(pt.goodput_per_s),
            })
            if pt.profile == "concurrency" and pt.concurrency:
                key = f"{label} · {pt.api} {pt.input_len}/{pt.output_len}"
                series.setdefault(key, []).append((float(pt.concurrency), pt.output_tokens_per_s))
    return {"rows": rows, "series": series}


def _opt(v: float | None, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _memory_by_config(records: list[RunRecord]) -> dict[tuple, tuple[float, str]]:
    """(model, backend, device) -> (MiB, what it is): the largest peak seen in any run."""
    out: dict[tuple, tuple[float, str]] = {}
    for r in records:
        key = (r.model.sha256 or r.model.ref, r.backend.name, r.backend.device)
        cands = []
        for p in r.perf:
            if p.peak_vram_mib is not None:
                cands.append((p.peak_vram_mib, "peak VRAM"))
            elif p.peak_rss_mib is not None:
                cands.append((p.peak_rss_mib, "peak RSS"))
        if not cands and r.model_load and r.model_load.rss_after_load_mib is not None:
            cands.append((r.model_load.rss_after_load_mib, "RSS after load"))
        for c in cands:
            if key not in out or c[0] > out[key][0]:
                out[key] = c
    return out


def _accuracy_entries(records: list[RunRecord], varying: list[str], openness: Openness):
    for r in records:
        for entry in r.accuracy:
            a = entry.model_dump() if hasattr(entry, "model_dump") else dict(entry)
            try:
                value = float(a["value"])
            except (KeyError, TypeError, ValueError):
                continue
            try:
                stderr = float(a.get("stderr")) if a.get("stderr") is not None else None
            except (TypeError, ValueError):
                stderr = None  # lm-eval's "N/A"
            scale = 100.0 if 0.0 <= value <= 1.0 else 1.0
            yield {
                "record": r, "config": config_label(r, varying), "access": access_of(r, openness),
                "task": str(a.get("task")), "metric": str(a.get("metric")),
                "filter": a.get("filter") if a.get("filter") not in (None, "none") else None,
                "value": value * scale, "stderr": stderr * scale if stderr is not None else None,
                "n": a.get("n"), "num_fewshot": a.get("num_fewshot"),
            }


def accuracy_section(records: list[RunRecord], varying: list[str], openness: Openness) -> dict[str, Any]:
    memory = _memory_by_config(records)
    rows, points = [], []
    for e in _accuracy_entries(records, varying, openness):
        r = e["record"]
        mem = memory.get((r.model.sha256 or r.model.ref, r.backend.name, r.backend.device))
        metric = e["metric"] + (f" ({e['filter']})" if e["filter"] else "")
        rows.append({
            "config": e["config"], "access": e["access"], "task": e["task"], "metric": metric,
            "value": f"{e['value']:.1f}" + (f" ± {e['stderr']:.1f}" if e["stderr"] is not None else ""),
            "n": e["n"] if e["n"] is not None else "", "shots": e["num_fewshot"] if e["num_fewshot"] is not None else "",
            "memory": f"{mem[0]:.0f} MiB ({mem[1]})" if mem else "not measured",
        })
        if mem:
            points.append((e["config"], f"{e['task']} {metric}", mem[0], e["value"], e["stderr"]))
    kinds = {m[1] for m in memory.values()}
    return {"rows": rows, "points": points, "memory_label": " / ".join(sorted(kinds)) + " (MiB)" if kinds else "memory (MiB)"}


def open_vs_closed_section(records: list[RunRecord], varying: list[str], scores: PublishedScores,
                           openness: Openness) -> list[dict[str, Any]]:
    by_benchmark: dict[str, list[dict]] = {}
    for e in _accuracy_entries(records, varying, openness):
        tp, part_of = scores.task_protocol_for(e["task"])
        bench = tp.benchmark if tp else e["task"]
        shots = e["num_fewshot"] if e["num_fewshot"] is not None else (tp.protocol.shots if tp else None)
        base = tp.protocol if tp else Protocol()
        e["protocol"] = base.model_copy(update={"shots": shots, "metric": e["metric"]})
        e["dataset_note"] = "; ".join(n for n in (tp.dataset_note if tp else None, part_of) if n) or None
        e["protocol_note"] = tp.protocol_note if tp else None
        by_benchmark.setdefault(bench, []).append(e)
    out = []
    for bench, measured in by_benchmark.items():
        opens = [m for m in measured if m["access"] == "open"]
        best = max(opens, key=lambda m: m["value"]) if opens else None
        rows = []
        for m in sorted(measured, key=lambda m: (m["access"], -m["value"])):
            gap, labels = None, []
            if m is not best and best is not None:
                gap = m["value"] - best["value"]
                if (m["task"], m["protocol"].shots, m["metric"], m["filter"]) != (best["task"], best["protocol"].shots, best["metric"], best["filter"]):
                    labels.append(f"protocol differs: {m['task']} {m['metric']} {m['filter'] or ''} {m['protocol'].shots}-shot "
                                  f"vs {best['task']} {best['metric']} {best['filter'] or ''} {best['protocol'].shots}-shot")
            if m["dataset_note"]:
                labels.append(f"dataset: {m['dataset_note']}")
            if m["protocol_note"]:
                labels.append(m["protocol_note"])
            rows.append({
                "model": m["config"], "kind": f"measured {m['access']}", "value": m["value"], "stderr": m["stderr"],
                "protocol": f"{m['task']} · {m['metric']}{' (' + m['filter'] + ')' if m['filter'] else ''} · "
                            f"{m['protocol'].shots}-shot · n={m['n']}",
                "source": "measured on this hardware (harness)", "gap": gap, "labels": labels, "differs": False,
            })
        for s in (scores.for_benchmark(bench) if bench in scores.benchmarks else []):
            labels = []
            differs, unstated = protocol_differences(best["protocol"], s.protocol) if best else ([], [])
            if differs:
                labels.append("protocol differs: " + "; ".join(differs))
            if unstated:
                labels.append("not stated by the source: " + ", ".join(unstated))
            if best and best["dataset_note"]:
                labels.append("dataset differs: measured on another version (see the measured row)")
            if not s.verified:
                labels.append("[unverified]")
            if s.note:
                labels.append(s.note)
            rows.append({
                "model": s.model, "kind": f"reported ({s.access})", "value": s.value, "stderr": None,
                "protocol": s.protocol_text, "source": s.source,
                "gap": (s.value - best["value"]) if best else None, "labels": labels,
                "differs": bool(differs or unstated or (best and best["dataset_note"])),
            })
        title = scores.benchmarks[bench].title if bench in scores.benchmarks else bench
        out.append({"benchmark": bench, "title": title, "rows": rows,
                    "best_open": best["config"] + f" ({best['value']:.1f})" if best else None, "plot": None})
    return out


def openness_cards(records: list[RunRecord], openness: Openness) -> list[dict[str, Any]]:
    cards, seen = [], set()
    for r in records:
        key = r.model.sha256 or r.model.ref
        if key in seen:
            continue
        seen.add(key)
        m = r.model
        fam = openness.family_for(m.name, Path(m.path).name, m.ref)
        licenses = []
        if m.license:
            licenses.append({"value": m.license, "source": f"GGUF metadata general.license of {Path(m.path).name}"})
        if fam and fam.license:
            licenses.append({"value": fam.license.value, "source": fam.source})
        spdx = m.license or (fam.license.spdx if fam and fam.license else None)
        if fam and fam.license and not fam.license.spdx and not m.license:
            osi, osi_source = "no", f"{fam.license.value} is not an SPDX/OSI license ({fam.source})"
        else:
            osi, osi_source = osi_approval(spdx)

        def fact(f):
            return {"value": f.value, "source": fam.source} if f is not None else {"value": UNKNOWN, "source": "no source"}

        cards.append({
            "model": model_short(r), "name": m.name, "file": Path(m.path).name if m.format != "openai-api" else m.path,
            "sha256": m.sha256, "family": f"{fam.family} ({fam.maker})" if fam else UNKNOWN,
            "licenses": licenses or [{"value": UNKNOWN, "source": "no license in the file's metadata or the reference data"}],
            "osi": {"value": osi, "source": osi_source},
            "weights": fact(fam.weights if fam else None),
            "training_code": fact(fam.training_code if fam else None),
            "training_data": fact(fam.training_data if fam else None),
            "clauses": ([{"value": c.value, "source": fam.source} for c in fam.clauses] or
                        [{"value": "none listed", "source": fam.source}]) if fam else [{"value": UNKNOWN, "source": "no source"}],
            "osaid": {"value": fam.osaid.value, "source": fam.source} if fam and fam.osaid else None,
        })
    return cards


def cost_section(records: list[RunRecord], varying: list[str], inputs: CostInputs, api_prices: list[ApiPrice]) -> dict[str, Any]:
    rows = []

    def money(v: float | None) -> str:
        return f"{v:.4f}" if v is not None else "—"

    for r in records:
        label = config_label(r, varying)
        best: dict[str, Any] = {}
        for p in r.perf:
            kind = "output (tg)" if p.n_gen else "input (pp)"
            if kind not in best or p.tps_mean > best[kind].tps_mean:
                best[kind] = p
        for kind, p in sorted(best.items()):
            parts = [("GPU", p.gpu_energy_j), ("CPU package", p.cpu_energy_j)]
            have = [(n, e) for n, e in parts if e is not None]
            seconds = sum(p.samples_ms) / 1000
            power = measured_power_w(sum(e for _, e in have), seconds) if have else None
            c = cost_per_mtok(p.tps_mean, inputs, power)
            source = c.power_source + (f" ({'+'.join(n for n, _ in have)}, {p.test})" if c.power_source == "measured" else "")
            rows.append(_cost_row(label, f"{kind} {p.test}, single stream", c, source, money))
        served = [pt for pt in r.load if pt.output_tokens_per_s > 0]
        if served:
            pt = max(served, key=lambda x: x.output_tokens_per_s)
            c = cost_per_mtok(pt.output_tokens_per_s, inputs, None)
            rows.append(_cost_row(label, f"output, served at {pt.label}", c, c.power_source, money))
    apis = [{"name": a.name, "input": f"{a.input_per_mtok:g}", "output": f"{a.output_per_mtok:g}"} for a in api_prices]
    return {"rows": rows, "apis": apis, "inputs": inputs,
            "missing": [n for n, v in (("--kwh-price", inputs.kwh_price), ("--hw-cost and --hw-lifetime-h", inputs.hw_cost)) if v is None]}


def _cost_row(label, what, c, source, money) -> dict[str, Any]:
    return {"config": label, "tokens": what, "tps": f"{c.tokens_per_s:.1f}",
            "power": f"{c.power_w:.1f}" if c.power_w is not None else "unknown", "power_source": source,
            "hours": f"{c.hours:.2f}", "kwh": f"{c.kwh:.3f}" if c.kwh is not None else "—",
            "electricity": money(c.electricity), "hardware": money(c.hardware), "total": money(c.total)}


def overview(records: list[RunRecord]) -> dict[str, Any]:
    hardware = {}
    for r in records:
        k = hardware_key(r.environment or {})
        gpus = ", ".join(str(g) for g in k[2] if g)
        hardware[json.dumps(k)] = f"{k[0]} ({k[1]} cores){', ' + gpus if gpus else ''}"
    failures = [f"{config_label(r, [])} ({r.run_id}): {f.cause}" for r in records for f in r.failures]
    created = sorted(r.created_at for r in records)
    return {"runs": len(records), "hardware": sorted(hardware.values()), "failures": failures,
            "first": created[0] if created else "", "last": created[-1] if created else "",
            "models": sorted({model_short(r) for r in records}), "backends": sorted({r.backend.name for r in records})}


# ---------------------------------------------------------------------------- build and write


def build_report(records: list[RunRecord], sources: list[str], inputs: CostInputs, api_prices: list[ApiPrice],
                 title: str = "Benchmark report", scores_path: Path | None = None,
                 openness_path: Path | None = None, with_plots: bool = True) -> Report:
    from harness import plots

    if not records:
        raise ConfigError("harness report: no result records to report on")
    scores = load_published_scores(scores_path) if scores_path else load_published_scores()
    openness = load_openness(openness_path) if openness_path else load_openness()
    varying = varying_settings(records)
    rep = Report(title=title, generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 records=records, sources=sources)
    speed = speed_section(records, varying)
    load = load_section(records, varying)
    acc = accuracy_section(records, varying, openness)
    ovc = open_vs_closed_section(records, varying, scores, openness)
    rep.sections = {
        "overview": overview(records), "speed": speed, "load": load, "accuracy": acc, "open_vs_closed": ovc,
        "openness": openness_cards(records, openness), "cost": cost_section(records, varying, inputs, api_prices),
        "reference": {"scores": scores.source_document, "openness": openness.source_document,
                      "frameworks": openness.frameworks},
    }
    if not with_plots:
        return rep
    if load["series"]:
        rep.plots["throughput"] = Plot("throughput", "Throughput against concurrency", plots.throughput_vs_concurrency(load["series"]),
                                       "output tokens/s against concurrent requests")
    if speed["ttft_groups"]:
        rep.plots["ttft"] = Plot("ttft", "Time to first token, percentiles",
                                 plots.latency_percentiles(speed["ttft_groups"], "Time to first token (p50 / p90 / p99)", "ms"),
                                 "time to first token percentiles per configuration")
    if speed["tpot_groups"]:
        rep.plots["tpot"] = Plot("tpot", "Time per output token, percentiles",
                                 plots.latency_percentiles(speed["tpot_groups"], "Time per output token (p50 / p90 / p99)", "ms"),
                                 "time per output token percentiles per configuration")
    if acc["points"]:
        rep.plots["accuracy_memory"] = Plot("accuracy_memory", "Accuracy against memory",
                                            plots.accuracy_vs_memory(acc["points"], acc["memory_label"]),
                                            "accuracy against memory per configuration and task")
    for i, block in enumerate(ovc):
        bars = [(row["model"], row["value"], row["stderr"], "reported" if row["kind"].startswith("reported") else row["kind"],
                 row["differs"]) for row in block["rows"]]
        if bars:
            name = f"open_vs_closed_{i + 1}"
            rep.plots[name] = Plot(name, f"Open against closed: {block['title']}",
                                   plots.open_vs_closed(f"{block['title']}: measured and reported", bars),
                                   f"measured and reported scores on {block['title']}")
            block["plot"] = name
    return rep


def render_html(rep: Report) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=1: "" if v is None else f"{v:.{d}f}"
    env.filters["signed"] = lambda v: "" if v is None else f"{v:+.1f}"
    return env.from_string(TEMPLATE.read_text()).render(rep=rep, s=rep.sections, plots=rep.plots)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a report is for sharing
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(rep: Report, html: Path, png_dir: Path | None = None) -> list[Path]:
    """PNGs first, then the HTML: every file appears whole or not at all."""
    if html.exists() and html.is_dir():
        raise ConfigError(f"--html {html} is a folder; give a file name such as report.html")
    if png_dir is not None and png_dir.exists() and not png_dir.is_dir():
        raise ConfigError(f"--png-dir {png_dir} is a file; give a folder")
    png_dir = png_dir or html.parent
    written = []
    for plot in rep.plots.values():
        path = png_dir / f"{html.stem}-{plot.name}.png"
        plot.file = os.path.relpath(path, html.parent)
        _write_bytes_atomic(path, plot.png)
        written.append(path)
    _write_bytes_atomic(html, render_html(rep).encode())
    return [html, *written]


def load_runs(paths: list[Path]) -> tuple[list[RunRecord], list[str]]:
    from harness.store import expand_paths, read_record

    for p in paths:
        if not p.exists():
            raise ConfigError(f"result path {p} does not exist")
    files = expand_paths(paths)
    if not files:
        raise ConfigError(f"{', '.join(map(str, paths))} holds no result files (*.json)")
    return [read_record(f) for f in files], [str(f) for f in files]
