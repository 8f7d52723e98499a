"""`harness report RUN... --html FILE`: one self-contained HTML page, PNG plots beside it.

The page needs no network: styles are inline and plots are embedded as base64 PNG (the
same PNGs are written beside the HTML for pull-request comments). The page opens with
the answer: per benchmark, the best open model measured here, each closed model measured
here with the gap and its 95% interval and whether the protocols are identical, then the
published scores (harness/data, with source and protocol), then speed, memory and cost of
the same models. After it: runs, every accuracy score (subjects collapsed), speed and
latency percentiles, serving throughput against concurrency, an openness card per model,
and cost per million tokens. docs/report.md explains how to read it.

Reported numbers come only from the reference data and are always labelled "reported";
a reported number whose protocol differs from the measured one says how.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.measurement.cost import ApiPrice, CostInputs, cost_per_mtok, measured_power_w
from harness.core.environment import hardware_key
from harness.core.errors import ConfigError
from harness.core.paths import PACKAGE_DIR
from harness.core.record import AccuracyResult, RunRecord
from harness.output.reference import (
    UNKNOWN,
    Openness,
    Protocol,
    PublishedScores,
    load_openness,
    load_published_scores,
    osi_approval,
    protocol_differences,
)

TEMPLATE = PACKAGE_DIR / "data" / "report.html.j2"


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
    from harness.output.printers import setting_columns

    varying = set()
    for backend in {r.backend.name for r in records}:
        mine = [r for r in records if r.backend.name == backend]
        columns = setting_columns(mine)
        for k in {k for r in mine for k in r.backend.settings}:
            if k in columns and len({json.dumps(r.backend.settings.get(k), sort_keys=True) for r in mine}) > 1:
                varying.add(k)
    return sorted(varying)


def model_short(r: RunRecord) -> str:
    """The model part of a label (harness.output.labels.model_name)."""
    from harness.output.labels import model_name

    return model_name(r)


def config_label(r: RunRecord, varying: list[str]) -> str:
    """The record's label (harness.output.labels) with the device and the settings that vary between records."""
    from harness.output.labels import model_label
    from harness.output.printers import setting_columns

    parts = [model_label(r)]
    if r.backend.device and r.backend.device != "cpu":
        parts.append(r.backend.device)
    columns = setting_columns([r])
    # a setting that follows another (a batch thread count) is named by the one it follows
    shown = [f"{columns[k].label if k in columns else k}={_fmt_setting(r.backend.settings[k])}" for k in varying
             if k in r.backend.settings and (k not in columns or columns[k].follows not in varying)]
    return " · ".join(parts + ([" ".join(shown)] if shown else []))


def access_of(r: RunRecord, openness: Openness, closed: frozenset[str] = frozenset()) -> str:
    """'open' for a local weights file, or a served model the harness started or whose name
    belongs to an open family; any other model behind an HTTP API is 'closed' (its weights
    are not known to be available), wherever the server runs: a proxy on this machine can
    stand in front of a closed API."""
    if r.model.format != "openai-api":
        return "open"
    from harness.output.labels import served_name

    if served_name(r).lower() in closed:  # harness report --closed-model NAME
        return "closed"
    if r.backend.settings.get("served_by") or openness.family_for(r.model.name, r.model.ref):
        return "open"
    return "closed"


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q))


def percentiles(xs: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of ``xs``, each only where there are samples enough for it."""
    from harness.output.significance import percentile_samples

    return {f"p{q}": _pct(xs, q) for q in (50, 90, 99) if xs and len(xs) >= percentile_samples(q)}


def too_few_for_p99(n: int) -> bool:
    from harness.output.significance import percentile_samples

    return n < percentile_samples(99)


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
    thin = any(r.get("p50") and not r.get("p99") for r in rows)
    return {"rows": rows, "ttft_groups": ttft_groups, "tpot_groups": tpot_groups, "roofline": roofline, "thin": thin}


def load_section(records: list[RunRecord], varying: list[str]) -> dict[str, Any]:
    rows, series, thin = [], {}, False
    for r in records:
        label = config_label(r, varying)
        for pt in r.load:
            few_ttft = too_few_for_p99(pt.sample_count("ttft_ms"))
            few_tpot = too_few_for_p99(pt.sample_count("tpot_ms"))
            thin |= few_ttft or few_tpot
            rows.append({
                "config": label, "point": pt.label, "api": pt.api, "lengths": f"{pt.input_len}/{pt.output_len}",
                "completed": f"{pt.completed}/{pt.requests}", "errors": pt.errors,
                "req_s": f"{pt.request_throughput_per_s:.2f}", "out_tps": f"{pt.output_tokens_per_s:.1f}",
                "ttft": _opt(pt.ttft_ms_median), "ttft_p99": "" if few_ttft else _opt(pt.ttft_ms_p99),
                "tpot": _opt(pt.tpot_ms_median), "tpot_p99": "" if few_tpot else _opt(pt.tpot_ms_p99),
                "goodput": _opt(pt.goodput_per_s),
            })
            if pt.profile == "concurrency" and pt.concurrency:
                key = f"{label} · {pt.api} {pt.input_len}/{pt.output_len}"
                series.setdefault(key, []).append((float(pt.concurrency), pt.output_tokens_per_s))
    return {"rows": rows, "series": series, "thin": thin}


def _opt(v: float | None, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _memory_by_config(records: list[RunRecord]) -> dict[tuple, tuple[float, str]]:
    """(model, backend, device) -> (MiB, what it is): the largest peak seen in any run."""
    out: dict[tuple, tuple[float, str]] = {}
    for r in records:
        key = _model_key(r)
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


def accuracy_section(records: list[RunRecord], varying: list[str], openness: Openness, min_docs: int,
                     closed: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every accuracy entry: benchmark and group rows (shown), their subjects (collapsed),
    each score with its 95% interval and the smoke-test label below min_docs documents.
    The memory scatter's points are benchmark-level scores only."""
    from harness.output.labels import recalled_note, smoke_label

    memory = _memory_by_config(records)
    rows, subjects, points = [], [], []
    for r in records:
        label = config_label(r, varying)
        recalled = recalled_note(r)
        mem = memory.get(_model_key(r))
        for a in r.accuracy:
            if a.value is None:
                continue
            fraction = 0.0 <= a.value <= 1.0
            scale = 100.0 if fraction else 1.0
            value = a.value * scale
            stderr = a.stderr * scale if a.stderr is not None else None
            ci = score_interval(value, stderr, a.n, fraction)
            metric = a.metric + (f" ({a.filter})" if a.filter not in (None, "none") else "")
            smoke = smoke_label(a.n, min_docs)
            row = {
                "config": label, "access": access_of(r, openness, closed), "task": a.task, "kind": a.kind, "parent": a.parent,
                "metric": metric, "value": f"{value:.1f}", "ci": _ci_text(ci) if ci else "",
                "n": a.n if a.n is not None else "", "shots": a.num_fewshot if a.num_fewshot is not None else "",
                "memory": f"{mem[0]:.0f} MiB ({mem[1]})" if mem else "not measured",
                "labels": [x for x in (smoke, recalled) if x], "smoke": bool(smoke),
            }
            (subjects if a.parent is not None else rows).append(row)
            if mem and a.parent is None:
                points.append((label, f"{a.task} {metric}", mem[0], value, stderr))
    kinds = {m[1] for m in memory.values()}
    configs = {p[0] for p in points}
    return {"rows": rows, "subjects": subjects, "points": points if len(configs) > 1 else [],
            "memory_label": " / ".join(sorted(kinds)) + " (MiB)" if kinds else "memory (MiB)"}


def _model_key(r: RunRecord) -> tuple:
    """One model on one backend: its eval records and bench records meet here (an eval
    record names no device)."""
    return (r.model.sha256 or r.model.ref, r.backend.name)


# ---------------------------------------------------------------------------- the headline


Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion p of n documents, as fractions.

    It also bounds the spread of any per-document score in [0, 1] (no such score varies
    more than a 0/1 one with the same mean), so it is used for every score lm-eval reports
    as a fraction, and is never narrower than the normal interval from lm-eval's stderr."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def score_interval(value_pct: float, stderr_pct: float | None, n: int | None, fraction: bool) -> tuple[float, float] | None:
    """95% interval in percent: the Wilson interval over n documents, widened to
    value ± 1.96 stderr where that is wider; None when neither n nor stderr is known."""
    lo = hi = None
    if fraction and n:
        a, b = wilson_interval(value_pct / 100, n)
        lo, hi = a * 100, b * 100
    if stderr_pct is not None:
        a, b = value_pct - Z95 * stderr_pct, value_pct + Z95 * stderr_pct
        lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    if lo is None:
        return None
    return (max(0.0, lo), min(100.0, hi)) if fraction else (lo, hi)


def gap_interval(a: float, a_ci: tuple[float, float] | None, b: float, b_ci: tuple[float, float] | None):
    """95% interval of a - b from the two scores' own intervals (Newcombe's method, which
    reduces to the normal one for symmetric intervals); a published figure has none."""
    la, ua = a_ci or (a, a)
    lb, ub = b_ci or (b, b)
    d = a - b
    return d - math.hypot(a - la, ub - b), d + math.hypot(ua - a, b - lb)


GENERATIVE_METRICS = ("exact_match", "pass@", "bleu", "rouge", "f1", "em")


def _infer_scoring(metric: str) -> str:
    if "perplexity" in metric or metric in ("bits_per_byte",):
        return "perplexity"
    return "generative" if metric.startswith(GENERATIVE_METRICS) else "loglikelihood"


@dataclass(frozen=True)
class MeasuredProtocol:
    """What two accuracy results must share to be compared as equals."""

    task: str
    metric: str
    config_hash: str | None
    shots: int | None
    chat_template: bool
    fewshot_as_multiturn: bool | None
    system_instruction: str | None
    scoring: str
    cot: bool | None = None  # as the bundled task prompts (its exemplars); None for another task

    def differences(self, other: "MeasuredProtocol") -> list[str]:
        """What differs, each as 'this vs other'; empty when the protocols are identical."""
        out = []
        if self.task != other.task:
            out.append(f"task {self.task} vs {other.task}")
        if self.metric != other.metric:
            out.append(f"metric {self.metric} vs {other.metric}")
        if self.scoring != other.scoring:
            out.append(f"scoring {self.scoring} vs {other.scoring}")
        if self.shots != other.shots:
            out.append(f"{_shots(self.shots)} vs {_shots(other.shots)}")
        if self.chat_template != other.chat_template:
            out.append(f"chat template {'applied' if self.chat_template else 'not applied'} vs "
                       f"{'applied' if other.chat_template else 'not applied'}")
        if bool(self.fewshot_as_multiturn) != bool(other.fewshot_as_multiturn):
            out.append(f"few-shot as multi-turn {'yes' if self.fewshot_as_multiturn else 'no'} vs "
                       f"{'yes' if other.fewshot_as_multiturn else 'no'}")
        if (self.system_instruction or None) != (other.system_instruction or None):
            out.append("system instruction differs")
        if not out and self.config_hash and other.config_hash and self.config_hash != other.config_hash:
            out.append(f"task config differs (sha256 {self.config_hash[:8]} vs {other.config_hash[:8]})")
        return out

    def as_reference(self) -> Protocol:
        """In the terms published figures are described in."""
        return Protocol(shots=self.shots, metric=self.metric.split(" ")[0], cot=self.cot,
                        form="generative" if self.scoring == "generative" else
                        ("loglikelihood" if self.scoring == "loglikelihood" else None), harness="lm-eval")

    def text(self) -> str:
        parts = [self.task, self.metric, _shots(self.shots), self.scoring]
        if self.chat_template:
            parts.append("chat template" + (", few-shot as multi-turn" if self.fewshot_as_multiturn else ""))
        if self.system_instruction:
            parts.append("system instruction")
        return " · ".join(parts)


def _shots(v: int | None) -> str:
    return "shots not recorded" if v is None else f"{v}-shot"


def measured_protocol(r: RunRecord, a: AccuracyResult, metric: str, cot: bool | None = None) -> MeasuredProtocol:
    e = r.evaluation
    system = e.system_instruction if e else None
    return MeasuredProtocol(
        task=a.task, metric=metric,
        config_hash=a.task_config_hash or (e.task_config_hashes.get(a.task) if e else None),
        shots=a.num_fewshot if a.num_fewshot is not None else (e.num_fewshot if e else None),
        chat_template=bool(e.apply_chat_template) if e else False,
        fewshot_as_multiturn=e.fewshot_as_multiturn if e else None,
        system_instruction=(hashlib.sha256(str(system).encode()).hexdigest()[:12] if system else None),
        scoring=a.scoring or _infer_scoring(a.metric),  # None in records written before scoring was kept
        cot=cot,
    )


@dataclass
class BenchmarkScore:
    """One benchmark-level (task or group, never a subject) score of one record."""

    record: RunRecord
    label: str
    access: str
    benchmark: str
    value: float  # percent
    ci: tuple[float, float] | None
    n: int | None
    protocol: MeasuredProtocol
    smoke: str | None  # "smoke test (n=…): not a claim"
    recalled: str | None
    dataset_note: str | None = None
    protocol_note: str | None = None

    @property
    def claim(self) -> bool:
        return self.smoke is None


FILTER_PREFERENCE = ("flexible-extract", "none", "strict-match")


def benchmark_scores(records: list[RunRecord], varying: list[str], scores: PublishedScores, openness: Openness,
                     min_docs: int, closed: frozenset[str] = frozenset()) -> list[BenchmarkScore]:
    """Each record's benchmark and group scores: top-level entries only (a subject of a group
    never stands for its benchmark), one metric per task (the bundled task's own, else the
    first), one answer filter (flexible-extract, else none, else the first)."""
    from harness.output.labels import model_label, recalled_note, smoke_label

    out = []
    for r in records:
        tops: dict[str, list] = {}
        for a in r.accuracy:
            if a.value is None or a.parent is not None:
                continue
            tp, part_of = scores.task_protocol_for(a.task)
            if part_of:  # a subject of a bundled group (records before `parent` was kept)
                continue
            tops.setdefault(a.task, []).append(a)
        for task, entries in tops.items():
            tp = scores.task_protocol(task)
            want = tp.protocol.metric if tp else None
            mine = [a for a in entries if a.metric == want] or [a for a in entries if a.metric == entries[0].metric]
            mine.sort(key=lambda a: (FILTER_PREFERENCE.index(a.filter) if a.filter in FILTER_PREFERENCE else 9, a.filter))
            a = mine[0]
            fraction = 0.0 <= a.value <= 1.0
            scale = 100.0 if fraction else 1.0
            value = a.value * scale
            stderr = a.stderr * scale if a.stderr is not None else None
            metric = a.metric + (f" ({a.filter})" if a.filter not in (None, "none") else "")
            out.append(BenchmarkScore(
                record=r, label=model_label(r), access=access_of(r, openness, closed),
                benchmark=tp.benchmark if tp else task, value=value, ci=score_interval(value, stderr, a.n, fraction),
                n=a.n, protocol=measured_protocol(r, a, metric, tp.protocol.cot if tp else None), smoke=smoke_label(a.n, min_docs),
                recalled=recalled_note(r), dataset_note=tp.dataset_note if tp else None,
                protocol_note=tp.protocol_note if tp else None,
            ))
    return out


def _ci_text(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "no interval (n and stderr unknown)"


def _gap_row(other_value: float, other_ci, ref: BenchmarkScore) -> dict[str, Any]:
    gap = other_value - ref.value
    lo, hi = gap_interval(other_value, other_ci, ref.value, ref.ci)
    return {"gap": gap, "gap_ci": (lo, hi), "gap_text": f"{gap:+.1f}", "gap_ci_text": f"[{lo:+.1f}, {hi:+.1f}]"}


def headline_section(bench_scores: list[BenchmarkScore], scores: PublishedScores, min_docs: int) -> list[dict[str, Any]]:
    """Per benchmark: the best open model measured here (from at least min_docs documents),
    each closed model measured here with the gap to it, then the published figures.

    A score from fewer documents is shown greyed and never chosen as best; when no open
    score is large enough, the gaps are taken against the best smoke-test score and are
    greyed with it."""
    # a protocol that only compares with itself (letter scoring) is a block of its own
    by_bench: dict[tuple[str, str], list[BenchmarkScore]] = {}
    for s in bench_scores:
        by_bench.setdefault((s.benchmark, letters_family(s.protocol.scoring)), []).append(s)
    out = []
    for (bench, family), mine in by_bench.items():
        opens = sorted((s for s in mine if s.access == "open"), key=lambda s: -s.value)
        claims = [s for s in opens if s.claim]
        ref = claims[0] if claims else (opens[0] if opens else None)
        ref_is_smoke = ref is not None and not ref.claim
        measured = []
        if ref is not None:
            measured.append(_measured_row(ref, "best open measured here" if not ref_is_smoke else
                                          "open measured here (best of smoke tests)", None))
        closed = [s for s in mine if s.access == "closed"]
        for s in sorted(closed, key=lambda s: (bool(ref and s.protocol.differences(ref.protocol)), -s.value)):
            measured.append(_measured_row(s, "closed measured here", ref))
        published = []
        if ref is not None and bench in scores.benchmarks and not family:
            reference_protocol = ref.protocol.as_reference()
            for p in sorted(scores.for_benchmark(bench), key=lambda p: (p.access != "closed", -p.value)):
                differs, unstated = protocol_differences(reference_protocol, p.protocol)
                match = []
                if differs:
                    match.append("differs: " + "; ".join(differs))
                if unstated:
                    match.append("not stated by the source: " + ", ".join(unstated))
                if ref.dataset_note:
                    match.append("dataset differs: measured on " + ref.dataset_note)
                labels = [] if p.verified else ["[unverified]"]
                if p.note:
                    labels.append(p.note)
                published.append({
                    "model": p.model, "kind": f"reported ({p.access})", "value": p.value, "ci": None,
                    "ci_text": "published figure (no interval given)", "n": None, "protocol": p.protocol_text,
                    "source": p.source, "match": match or ["as stated, same shots and form (other details unknown)"],
                    "identical": False, "labels": labels, "smoke": ref.smoke if ref_is_smoke else None,
                    **_gap_row(p.value, None, ref),
                })
        title = scores.benchmarks[bench].title if bench in scores.benchmarks else bench
        if family:
            title += " · scored by letters (first generated token)"
        out.append({"benchmark": bench, "title": title, "measured": measured, "published": published,
                    "ref": ref, "ref_is_smoke": ref_is_smoke, "has_closed": bool(closed), "plot": None,
                    "min_docs": min_docs, "letters": bool(family)})
    # comparisons that are claims first: a closed model measured here against an open score
    # from enough documents (the letter protocol, the same on both sides, before the others),
    # then smoke tests, then benchmarks with no closed model measured; among equals, the
    # score from more documents first
    return sorted(out, key=lambda b: (not b["has_closed"], b["ref_is_smoke"], not b["letters"],
                                      -((b["ref"].n or 0) if b["ref"] is not None else 0), b["title"]))


def letters_family(scoring: str | None) -> str:
    """'letters' for any letter-scored protocol (first-token or generated), else ''."""
    return "letters" if (scoring or "").startswith("letters") else ""


def _measured_row(s: BenchmarkScore, kind: str, ref: BenchmarkScore | None) -> dict[str, Any]:
    labels = [x for x in (s.smoke, s.recalled) if x]
    if s.dataset_note:
        labels.append("dataset: " + s.dataset_note)
    row = {"score": s, "model": s.label, "kind": kind, "value": s.value, "ci": s.ci, "ci_text": _ci_text(s.ci), "n": s.n,
           "protocol": s.protocol.text(), "source": "measured on this hardware", "labels": labels,
           "smoke": s.smoke, "identical": None, "match": [], "gap": None, "gap_text": "", "gap_ci_text": ""}
    if ref is not None and ref is not s:
        diffs = s.protocol.differences(ref.protocol)
        row["identical"] = not diffs
        row["match"] = ["identical"] if not diffs else ["differs: " + "; ".join(diffs)]
        row.update(_gap_row(s.value, s.ci, ref))
        if ref.smoke and not s.smoke:
            row["smoke"] = ref.smoke
    return row


def side_by_side(headline: list[dict[str, Any]], records: list[RunRecord], inputs: CostInputs,
                 api_prices: list[ApiPrice]) -> list[dict[str, Any]]:
    """Speed, memory and cost of the models in the headline, one row per model and backend:
    the fastest single-stream generation and prompt speed any record measured for it, its
    largest memory peak, what a million output tokens cost at that speed, and for a model
    behind an API the prices given with --api-price. An evaluation's wall time is never
    shown as speed (its answers may have come from the request cache)."""
    from harness.output.labels import model_label, served_name

    memory = _memory_by_config(records)
    wanted: dict[tuple, RunRecord] = {}
    for block in headline:
        for s in [block["ref"]] + [row["score"] for row in block["measured"] if row.get("score") is not None]:
            if s is not None:
                wanted.setdefault(_model_key(s.record), s.record)
    prices = {a.name.lower(): a for a in api_prices}
    rows = []
    for key, r in wanted.items():
        perf = [p for x in records if _model_key(x) == key for p in x.perf if p.batch is None]
        tg = max((p for p in perf if p.n_gen), key=lambda p: p.tps_mean, default=None)
        pp = max((p for p in perf if not p.n_gen), key=lambda p: p.tps_mean, default=None)
        mem = memory.get(key)
        cost = None
        if tg is not None:
            c = cost_per_mtok(tg.tps_mean, inputs, None)
            cost = f"{c.total:.4f} {inputs.currency}" if c.total is not None else (
                f"{c.hours:.2f} h of this machine" if c.hours is not None else None)
        api = prices.get(served_name(r).lower()) if r.model.format == "openai-api" else None
        rows.append({
            "model": model_label(r),
            "tg": f"{tg.tps_mean:.1f} ± {tg.tps_stddev:.1f} ({tg.test})" if tg else "not measured",
            "pp": f"{pp.tps_mean:.1f} ± {pp.tps_stddev:.1f} ({pp.test})" if pp else "not measured",
            "memory": f"{mem[0]:.0f} MiB ({mem[1]})" if mem else ("held by the API provider" if r.model.format == "openai-api"
                                                              else "not measured"),
            "cost": (f"API: {api.input_per_mtok:g} in / {api.output_per_mtok:g} out per Mtok ({inputs.currency})" if api else
                     (f"{cost} per Mtok output" if cost else ("give --api-price NAME=IN/OUT" if r.model.format == "openai-api"
                                                              else "no throughput measured"))),
        })
    return rows


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
    from harness.output.labels import recalled_note

    failures = [f"{config_label(r, [])} ({r.run_id}): {f.cause}" for r in records for f in r.failures]
    recalled = [f"{config_label(r, [])} ({r.run_id}): {recalled_note(r)}" for r in records if recalled_note(r)]
    created = sorted(r.created_at for r in records)
    return {"runs": len(records), "hardware": sorted(hardware.values()), "failures": failures, "recalled": recalled,
            "first": created[0] if created else "", "last": created[-1] if created else "",
            "models": sorted({model_short(r) for r in records}), "backends": sorted({r.backend.name for r in records})}


# ---------------------------------------------------------------------------- build and write


def build_report(records: list[RunRecord], sources: list[Path], inputs: CostInputs, api_prices: list[ApiPrice],
                 title: str = "Benchmark report", scores_path: Path | None = None,
                 openness_path: Path | None = None, with_plots: bool = True, min_docs: int | None = None,
                 closed_models: list[str] | None = None) -> Report:
    from harness.output import plots
    from harness.output.labels import MIN_DOCS

    if not records:
        raise ConfigError("harness report: no result records to report on")
    min_docs = MIN_DOCS if min_docs is None else min_docs
    if min_docs < 1:
        raise ConfigError(f"--min-docs must be at least 1 (got {min_docs})")
    scores = load_published_scores(scores_path) if scores_path else load_published_scores()
    openness = load_openness(openness_path) if openness_path else load_openness()
    varying = varying_settings(records)
    rep = Report(title=title, generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 records=records, sources=list(map(str, sources)))
    speed = speed_section(records, varying)
    load = load_section(records, varying)
    closed = frozenset(n.strip().lower() for n in closed_models or [])
    acc = accuracy_section(records, varying, openness, min_docs, closed)
    headline = headline_section(benchmark_scores(records, varying, scores, openness, min_docs, closed), scores, min_docs)
    rep.sections = {
        "overview": overview(records), "speed": speed, "load": load, "accuracy": acc, "headline": headline,
        "side_by_side": side_by_side(headline, records, inputs, api_prices), "min_docs": min_docs,
        "openness": openness_cards(records, openness), "cost": cost_section(records, varying, inputs, api_prices),
        "reference": {"scores": scores.source_document, "openness": openness.source_document,
                      "frameworks": openness.frameworks},
    }
    if not with_plots:
        return rep
    for i, block in enumerate(headline):
        bars = [(row["model"], row["value"], row["ci"], "measured " + row["score"].access, bool(row["smoke"]))
                for row in block["measured"]]
        bars += [(row["model"], row["value"], None, "reported", False) for row in block["published"]]
        if len(bars) < 2:  # nothing to compare
            continue
        name = f"benchmark_{i + 1}"
        what = "measured here and published" if block["published"] else "measured here"
        rep.plots[name] = Plot(name, f"{block['title']}: {what}", plots.benchmark_scores(f"{block['title']}: {what}", bars),
                               f"scores on {block['title']} with 95% intervals"
                               + ("; published figures hatched" if block["published"] else ""))
        block["plot"] = name
    if load["series"]:
        rep.plots["throughput"] = Plot("throughput", "Throughput against concurrency", plots.throughput_vs_concurrency(load["series"]),
                                       "output tokens/s against concurrent requests")
    if speed["ttft_groups"]:
        rep.plots["ttft"] = Plot("ttft", "Time to first token, percentiles",
                                 plots.latency_percentiles(speed["ttft_groups"], "Time to first token", "ms"),
                                 "time to first token percentiles per configuration")
    if speed["tpot_groups"]:
        rep.plots["tpot"] = Plot("tpot", "Time per output token, percentiles",
                                 plots.latency_percentiles(speed["tpot_groups"], "Time per output token", "ms"),
                                 "time per output token percentiles per configuration")
    if acc["points"]:
        rep.plots["accuracy_memory"] = Plot("accuracy_memory", "Accuracy against memory",
                                            plots.accuracy_vs_memory(acc["points"], acc["memory_label"]),
                                            "accuracy against memory per configuration and benchmark")
    return rep


def render_html(rep: Report) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=1: "" if v is None else f"{v:.{d}f}"
    env.filters["signed"] = lambda v: "" if v is None else f"{v:+.1f}"
    return env.from_string(TEMPLATE.read_text()).render(rep=rep, s=rep.sections, plots=rep.plots)


def write_report(rep: Report, html: Path, png_dir: Path | None = None) -> list[Path]:
    """PNGs first, then the HTML: every file appears whole or not at all (store.write_atomic)."""
    from harness.output.store import write_atomic

    if html.exists() and html.is_dir():
        raise ConfigError(f"--html {html} is a folder; give a file name such as report.html")
    if png_dir is not None and png_dir.exists() and not png_dir.is_dir():
        raise ConfigError(f"--png-dir {png_dir} is a file; give a folder")
    png_dir = png_dir or html.parent
    written = []
    for plot in rep.plots.values():
        path = png_dir / f"{html.stem}-{plot.name}.png"
        plot.file = os.path.relpath(path, html.parent)
        write_atomic(path, plot.png)
        written.append(path)
    write_atomic(html, render_html(rep))
    return [html, *written]
