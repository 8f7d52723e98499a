"""`harness compare BASE HEAD`: what a change did, with noise told apart from change.

Records are broken into measurements (one metric of one test or task of one measured
configuration) and joined on identity: the model file (sha256), the backend and every
setting, the test or task. When the two sides differ on purpose in one thing (a setting
such as threads, the quantization, the backend, the model), that thing is the *axis*:
it is left out of the join and shown as base -> head; everything else must still match.

A change is flagged only when it is larger than a threshold AND significant:
  * performance: a two-sided Mann-Whitney U test on the raw per-repetition samples
    (or, with --stat bootstrap, a bootstrap interval of the head/base ratio of means
    that excludes 1); repeated runs in a folder pool their samples;
  * accuracy: the change against the combined standard error of the two scores
    (z = delta / sqrt(se_base^2 + se_head^2)).
Figures with a single value per side (peak memory of one run, say) cannot be tested;
their change is shown as "untested" and never flagged."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harness.core.environment import hardware_key
from harness.core.errors import ConfigError, HarnessError
from harness.core.record import DIRECTION, LOWER_IS_BETTER_ACCURACY, RunRecord
from harness.output.printers import rows_to_csv


Stat = Literal["mwu", "bootstrap"]

AXIS_KINDS = ("model", "quantization", "backend")
SINGLE_VALUE_PERF = ("peak_rss_mib", "peak_uss_mib", "peak_vram_mib", "gpu_energy_j", "cpu_energy_j")
METRIC_UNITS = {"tps": "t/s", "ms": "ms", "mib": "MiB", "j": "J"}


class CompareError(HarnessError):
    pass


class GateFailed(HarnessError):
    """--fail-on found a flagged regression; the table has been printed already."""

    exit_code = 1


# ---------------------------------------------------------------------------- measurements


@dataclass
class Measurement:
    kind: Literal["perf", "load", "model_load", "accuracy"]
    test: str
    metric: str
    samples: list[float]
    direction: int
    unit: str
    record: RunRecord
    source: str
    stderr: float | None = None
    n: int | None = None
    num_fewshot: int | None = None
    filter: str | None = None
    config_hash: str | None = None  # task config hash of an accuracy entry, when recorded
    center: Literal["mean", "median"] = "mean"  # serving latencies are read at the median

    @property
    def value(self) -> float:
        if self.center == "median":
            import statistics

            return statistics.median(self.samples)
        return sum(self.samples) / len(self.samples)


def _unit(metric: str) -> str:
    tail = metric.rsplit("_", 1)[-1].lower()
    return METRIC_UNITS.get(tail, "")


def _finite(v: float | None) -> float | None:
    """A figure compare can use: None for a missing, infinite or NaN one."""
    return v if v is not None and math.isfinite(v) else None


def measurements(record: RunRecord, source: str = "") -> list[Measurement]:
    """Every comparable figure of one record."""
    out: list[Measurement] = []
    for p in record.perf:
        kind = re.match(r"[a-z]+", p.test)
        # llama-bench's pp512+tg128 is its own kind of test (pg_tps), not a prompt-processing figure
        prefix = "pg" if "+" in p.test.partition(" @ ")[0] else kind.group(0) if kind else p.test
        if p.samples_tps:
            out.append(Measurement("perf", p.test, f"{prefix}_tps", list(p.samples_tps), DIRECTION["tps_mean"], "t/s", record, source))
        if p.samples_ttft_ms:
            out.append(Measurement("perf", p.test, "ttft_ms", list(p.samples_ttft_ms), DIRECTION["ttft_ms_mean"], "ms", record, source))
        for name in SINGLE_VALUE_PERF:
            v = getattr(p, name)
            if v is not None:
                out.append(Measurement("perf", p.test, name, [float(v)], DIRECTION[name], _unit(name), record, source))
    if record.model_load is not None:
        out.append(Measurement("model_load", "load", "load_ms", [record.model_load.load_ms], DIRECTION["load_ms"], "ms", record, source))
        if record.model_load.rss_after_load_mib is not None:
            out.append(Measurement("model_load", "load", "rss_after_load_mib", [record.model_load.rss_after_load_mib],
                                   DIRECTION["rss_after_load_mib"], "MiB", record, source))
    for a in record.accuracy:
        value = _finite(a.value)
        if value is None:
            continue
        hib = a.higher_is_better
        direction = (+1 if hib else -1) if hib is not None else (-1 if a.metric in LOWER_IS_BETTER_ACCURACY else +1)
        out.append(Measurement(
            "accuracy", a.task, a.metric, [value], direction, "", record, source,
            stderr=_finite(a.stderr), n=a.n, num_fewshot=a.num_fewshot,
            filter=None if a.filter in ("", "none") else a.filter, config_hash=a.task_config_hash or None,
        ))
    for point in record.load:
        # the load shape is part of the identity: same label, API and lengths
        test = f"{point.label} {point.api} in={point.input_len if point.input_len is not None else 'dataset'} out={point.output_len}"
        for name in ("request_throughput_per_s", "output_tokens_per_s", "total_tokens_per_s", "goodput_per_s"):
            v = getattr(point, name)
            if v is not None:
                out.append(Measurement("load", test, name, [float(v)], DIRECTION[name], "/s", record, source))
        out.append(Measurement("load", test, "errors", [float(point.errors)], DIRECTION["errors"], "", record, source))
        ok = [s for s in point.samples if s.ok]
        per_request = {
            "ttft_ms_median": [s.ttft_ms for s in ok if s.ttft_ms is not None],
            "tpot_ms_median": [s.tpot_ms for s in ok if s.tpot_ms is not None],
            "itl_ms_median": [x for s in ok for x in s.itl_ms],
            "e2el_ms_median": [s.e2el_ms for s in ok if s.e2el_ms is not None],
        }
        for name, samples in per_request.items():
            if samples:
                out.append(Measurement("load", test, name, [float(x) for x in samples], DIRECTION[name], "ms", record, source,
                                       center="median"))
    return out


# ---------------------------------------------------------------------------- identity and axis


def model_key(r: RunRecord) -> str:
    return r.model.sha256 or r.model.ref


def _settings(r: RunRecord) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True) for k, v in r.backend.settings.items()}


def describe(r: RunRecord) -> dict[str, str]:
    """What a record's configuration is, key by key, for finding the axis."""
    d = {
        "model": model_key(r),
        "model_family": json.dumps([r.model.architecture, r.model.parameters]),
        "quantization": str(r.model.quantization),
        "backend": r.backend.name,
    }
    d.update({f"setting:{k}": v for k, v in _settings(r).items()})
    return d


@dataclass(frozen=True)
class Axis:
    kind: Literal["setting", "model", "quantization", "backend"]
    keys: tuple[str, ...] = ()  # setting names, for kind == "setting"

    @property
    def label(self) -> str:
        return ", ".join(self.keys) if self.kind == "setting" else self.kind

    def value(self, r: RunRecord) -> str:
        if self.kind == "setting":
            vals = [r.backend.settings.get(k) for k in self.keys]
            shown = [fmt_setting(v) for v in vals]
            return shown[0] if len(set(shown)) == 1 else "/".join(shown)
        if self.kind == "quantization":
            return str(r.model.quantization)
        if self.kind == "backend":
            return f"{r.backend.name} {r.backend.version or ''}".strip()
        return file_label(r)


def fmt_setting(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return "(unset)" if v is None else str(v)


def file_label(r: RunRecord) -> str:
    """The model's label with the start of its file's sha256: two files of one name differ."""
    from harness.output.printers import model_label

    short = (r.model.sha256 or "")[:8]
    return f"{model_label(r)} ({short})" if short else model_label(r)


def _setting_key(name: str, records: list[RunRecord]) -> str:
    from harness.output.printers import setting_columns

    by_title = {meta.label: key for key, meta in setting_columns(records).items()}
    key = by_title.get(name, name)
    known = sorted({k for r in records for k in r.backend.settings})
    if key not in known:
        raise ConfigError(f"--by {name}: no record has that setting; use model, quantization, backend or one of: {', '.join(known)}")
    return key


def _differences(base: list[RunRecord], head: list[RunRecord]) -> list[str]:
    keys = sorted({k for r in base + head for k in describe(r)})

    def values(records: list[RunRecord], k: str) -> set[str]:
        return {describe(r).get(k, "(absent)") for r in records}

    return [k for k in keys if values(base, k) != values(head, k)]


def coupled_settings(records: list[RunRecord]) -> list[frozenset[str]]:
    """Settings that move together: one that follows another unless set on its own (a batch
    thread count follows the thread count), so a threads 1 -> 2 comparison differs in both."""
    from harness.core.registry import settings_metadata

    return [frozenset({k, m.follows}) for k, m in settings_metadata(r.backend.name for r in records).items()
            if m.follows]


def find_axis(base: list[RunRecord], head: list[RunRecord], by: str | None) -> Axis | None:
    """The one thing the two sides differ in; None when they are the same configurations."""
    diff = _differences(base, head)
    coupled = coupled_settings(base + head)
    diff_settings = [k.removeprefix("setting:") for k in diff if k.startswith("setting:")]
    if by:
        if by in AXIS_KINDS:
            return Axis(by)  # type: ignore[arg-type]
        key = _setting_key(by, base + head)
        group = next((g for g in coupled if key in g), frozenset({key}))
        return Axis("setting", tuple(sorted({key} | (group & set(diff_settings)))))
    if not diff:
        return None
    if "backend" in diff:
        return Axis("backend")
    if "model" in diff:
        if "quantization" in diff and "model_family" not in diff:
            return Axis("quantization")
        return Axis("model")
    if len(diff_settings) == 1 or any(set(diff_settings) <= g for g in coupled):
        return Axis("setting", tuple(sorted(diff_settings)))
    raise CompareError(f"base and head differ in more than one setting ({', '.join(diff_settings)}); "
                       "name the axis with --by SETTING, or compare runs that differ in one")


def join_key(m: Measurement, axis: Axis | None) -> tuple:
    r = m.record
    if axis and axis.kind == "model":
        model: Any = None
    elif axis and axis.kind == "quantization":
        model = (r.model.architecture, r.model.parameters)
    else:
        model = model_key(r)
    backend = None if axis and axis.kind == "backend" else r.backend.name
    if axis and axis.kind == "backend":
        settings: tuple = ()  # each backend has its own settings; they are shown, not joined
    else:
        skip = set(axis.keys) if axis and axis.kind == "setting" else set()
        settings = tuple(sorted((k, v) for k, v in _settings(r).items() if k not in skip))
    return (model, backend, settings, m.kind, m.test, m.metric, m.filter, m.num_fewshot)


# ---------------------------------------------------------------------------- statistics


@dataclass
class Significance:
    method: str
    p: float | None = None
    ci_low: float | None = None  # of head/base (perf) or of the difference (accuracy)
    ci_high: float | None = None
    significant: bool | None = None  # None: cannot be tested
    why_untested: str | None = None


def _min_mwu_p(n1: int, n2: int) -> float:
    """The smallest two-sided p an exact Mann-Whitney U test can reach with these sizes."""
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def perf_significance(base: list[float], head: list[float], alpha: float, stat: Stat) -> Significance:
    import numpy as np
    from scipy import stats

    if len(base) < 2 or len(head) < 2:
        return Significance(stat, why_untested=f"{len(base)} vs {len(head)} values: a test needs raw samples (repeat the run)")
    sig = Significance(stat)
    if len(set(base) | set(head)) == 1:
        sig.p, sig.significant, sig.ci_low, sig.ci_high = 1.0, False, 1.0, 1.0
        return sig
    sig.p = float(stats.mannwhitneyu(head, base, alternative="two-sided").pvalue)
    if min(np.mean(base), np.mean(head)) > 0:
        res = stats.bootstrap(
            (np.asarray(base), np.asarray(head)),
            lambda b, h, axis: np.mean(h, axis=axis) / np.mean(b, axis=axis),
            vectorized=True, n_resamples=2000, confidence_level=1 - alpha, method="percentile",
            rng=np.random.default_rng(0),
        )
        sig.ci_low, sig.ci_high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if stat == "mwu":
        if _min_mwu_p(len(base), len(head)) > alpha:
            sig.why_untested = f"{len(base)} vs {len(head)} samples cannot reach p < {alpha:g} (use more --reps)"
            sig.significant = None
        else:
            sig.significant = sig.p < alpha
    else:
        if sig.ci_low is None:
            sig.why_untested = "ratio undefined (a mean is not positive)"
        else:
            sig.significant = not (sig.ci_low <= 1.0 <= sig.ci_high)
    return sig


def accuracy_significance(base: Measurement, head: Measurement, alpha: float) -> Significance:
    from scipy import stats

    sig = Significance("z (combined stderr)")
    if base.stderr is None or head.stderr is None:
        sig.why_untested = "no stderr recorded"
        return sig
    delta = head.value - base.value
    se = math.hypot(base.stderr, head.stderr)
    if se == 0:
        sig.p = 1.0 if delta == 0 else 0.0
    else:
        sig.p = float(2 * stats.norm.sf(abs(delta) / se))
        z = float(stats.norm.isf(alpha / 2))
        sig.ci_low, sig.ci_high = delta - z * se, delta + z * se
    sig.significant = sig.p < alpha
    return sig


# ---------------------------------------------------------------------------- thresholds and gates


@dataclass(frozen=True)
class Threshold:
    amount: float  # magnitude: percent for "%", points for "pt"
    unit: Literal["%", "pt"]
    sign: int = 0  # -1 decrease, +1 increase, 0 either (whichever is worse)

    def show(self) -> str:
        s = {-1: "-", 1: "+", 0: "±"}[self.sign]
        return f"{s}{self.amount:g}{'%' if self.unit == '%' else ' pt'}"


_THRESHOLD = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(%|pts?)\s*$")


def parse_threshold(option: str, text: str) -> Threshold:
    m = _THRESHOLD.match(text)
    if not m:
        raise ConfigError(f"{option}: bad threshold '{text}'; write a number with % or pt, e.g. 5% or 1pt")
    sign = {"-": -1, "+": 1, "": 0}[m.group(1)]
    return Threshold(float(m.group(2)), "%" if m.group(3) == "%" else "pt", sign)


@dataclass(frozen=True)
class GateRule:
    key: str
    threshold: Threshold

    def matches(self, m: Measurement) -> bool:
        if self.key == "accuracy":
            return m.kind == "accuracy"
        return self.key in (m.metric, f"{m.test}/{m.metric}")


def parse_fail_on(spec: str) -> list[GateRule]:
    """'tg_tps:-5%,acc:-1pt' -> rules. A key is a metric name, TEST/METRIC, or 'accuracy'."""
    rules = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        key, sep, value = item.rpartition(":")
        if not sep or not key.strip():
            raise ConfigError(f"--fail-on: bad item '{item}'; write METRIC:THRESHOLD, e.g. tg_tps:-5%,acc:-1pt")
        rules.append(GateRule(key.strip(), parse_threshold(f"--fail-on {key.strip()}", value)))
    if not rules:
        raise ConfigError("--fail-on: empty; write METRIC:THRESHOLD, e.g. tg_tps:-5%,acc:-1pt")
    return rules


# ---------------------------------------------------------------------------- the comparison


@dataclass
class Row:
    head_label: str
    kind: str
    model: str
    backend: str
    settings: dict[str, str]
    test: str
    metric: str
    unit: str
    direction: int
    axis_base: str | None
    axis_head: str | None
    n_base: int = 0
    n_head: int = 0
    base: float | None = None
    head: float | None = None
    base_sd: float | None = None  # stddev of samples (perf) or stderr (accuracy)
    head_sd: float | None = None
    change: float | None = None  # percent (unit "%") or points (unit "pt")
    change_unit: str = "%"
    threshold: str = ""
    method: str = ""
    p: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str = ""
    flagged: bool = False
    gate: str | None = None  # the --fail-on rule that gates this row
    gate_failed: bool = False
    note: str | None = None

    @property
    def regression(self) -> bool:
        return self.flagged and self.verdict == "regressed"


@dataclass
class Comparison:
    base_paths: list[str]
    head_paths: list[str]
    head_label: str
    axis: str | None
    axis_values: tuple[list[str], list[str]] | None
    stat: str
    alpha: float
    rows: list[Row]
    only_base: list[str] = field(default_factory=list)
    only_head: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _stddev(xs: list[float]) -> float | None:
    import statistics

    return statistics.stdev(xs) if len(xs) > 1 else None


def _environment_warnings(base: list[RunRecord], head: list[RunRecord], axis: Axis | None) -> list[str]:
    warnings = []

    def hw(records):
        return {json.dumps(hardware_key(r.environment)) for r in records if r.environment}

    hb, hh = hw(base), hw(head)
    if hb and hh and hb != hh:
        def show(keys):
            return "; ".join(f"{k[0]} ({k[1]} cores{', GPUs ' + ', '.join(map(str, k[2])) if k[2] else ''})"
                             for k in (json.loads(x) for x in sorted(keys)))
        warnings.append(f"different hardware: base ran on {show(hb)}, head on {show(hh)}; "
                        "speed and memory changes reflect the machines, not only the change")

    def software(r: RunRecord) -> dict[str, Any]:
        env = r.environment or {}
        d = {"python": env.get("python"), "os": env.get("os_release"), "kernel": env.get("kernel")}
        d.update({f"package {k}": v for k, v in (env.get("packages") or {}).items() if v})
        if not axis or axis.kind != "backend":
            d[f"{r.backend.name} version"] = r.backend.version
            d[f"{r.backend.name} engine"] = r.backend.engine_version
        return d

    diffs = []
    for key in sorted({k for r in base + head for k in software(r)}):
        vb = {str(software(r).get(key)) for r in base}
        vh = {str(software(r).get(key)) for r in head}
        if vb != vh:
            diffs.append(f"{key} {'/'.join(sorted(vb))} -> {'/'.join(sorted(vh))}")
    if diffs:
        warnings.append("different software: " + "; ".join(diffs))
    for side, records in (("base", base), ("head", head)):
        for r in records:
            if r.status != "ok":
                causes = "; ".join(f.cause for f in r.failures) or r.status
                warnings.append(f"{side} run {r.run_id} is {r.status}: {causes}")
    return warnings


def _pool(ms: list[Measurement]) -> Measurement:
    """Repeated runs of one configuration pool their samples; accuracy keeps the latest run."""
    if len(ms) == 1:
        return ms[0]
    if ms[0].kind == "accuracy":
        return max(ms, key=lambda m: m.record.created_at)
    first = ms[0]
    samples = [x for m in ms for x in m.samples]
    return Measurement(first.kind, first.test, first.metric, samples, first.direction, first.unit, first.record, first.source,
                       center=first.center)


def _label(m: Measurement) -> str:
    r = m.record
    settings = ", ".join(f"{k}={fmt_setting(v)}" for k, v in sorted(r.backend.settings.items()))
    extra = f" filter={m.filter}" if m.filter else ""
    return f"{file_label(r)} · {r.backend.name} [{settings}] · {m.test} {m.metric}{extra}"


def compare(base_records: list[RunRecord], head_records: list[RunRecord], *, base_paths: list[str] | None = None,
            head_paths: list[str] | None = None, head_label: str = "head", by: str | None = None,
            threshold: Threshold = Threshold(5, "%"), acc_threshold: Threshold = Threshold(1, "pt"),
            alpha: float = 0.05, stat: Stat = "mwu", gate: list[GateRule] | None = None) -> Comparison:
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1, not {alpha}")
    axis = find_axis(base_records, head_records, by)
    sides: list[dict[tuple, list[Measurement]]] = []
    for records in (base_records, head_records):
        grouped: dict[tuple, list[Measurement]] = defaultdict(list)
        for r in records:
            for m in measurements(r):
                grouped[join_key(m, axis)].append(m)
        sides.append(grouped)
    base_g, head_g = sides
    if axis:
        for side, grouped in (("base", base_g), ("head", head_g)):
            for ms in grouped.values():
                values = sorted({axis.value(m.record) for m in ms})
                if len(values) > 1:
                    raise CompareError(f"{side} holds several values of the axis {axis.label} ({', '.join(values)}) "
                                       f"for the same measurement ({ms[0].test} {ms[0].metric}); give one value per side")
    joined = [k for k in base_g if k in head_g]
    if not joined:
        diff = _differences(base_records, head_records)
        what = f" (they differ in {', '.join(d.removeprefix('setting:') for d in diff)})" if diff else ""
        raise CompareError("nothing to compare: no measurement in base matches one in head on model, backend, "
                           f"settings and test{what}; name the axis with --by SETTING")
    rows = []
    for key in joined:
        b, h = _pool(base_g[key]), _pool(head_g[key])
        rows.append(_row(b, h, axis, head_label, threshold, acc_threshold, alpha, stat, gate or []))
    comparison = Comparison(
        base_paths=base_paths or [], head_paths=head_paths or [], head_label=head_label,
        axis=axis.label if axis else None,
        axis_values=(sorted({axis.value(r) for r in base_records}), sorted({axis.value(r) for r in head_records})) if axis else None,
        stat=stat, alpha=alpha, rows=rows,
        only_base=sorted(_label(base_g[k][0]) for k in base_g if k not in head_g),
        only_head=sorted(_label(head_g[k][0]) for k in head_g if k not in base_g),
        warnings=_environment_warnings(base_records, head_records, axis),
    )
    if gate:
        for rule in gate:
            for k in base_g:
                m = base_g[k][0]
                if k not in head_g and rule.matches(m):
                    comparison.warnings.append(f"--fail-on {rule.key}: {_label(m)} is missing from head")
    return comparison


def _row(b: Measurement, h: Measurement, axis: Axis | None, head_label: str, threshold: Threshold,
         acc_threshold: Threshold, alpha: float, stat: Stat, gate: list[GateRule]) -> Row:
    r = b.record
    settings = {k: fmt_setting(v) for k, v in r.backend.settings.items()}
    if axis and axis.kind == "setting":
        for k in axis.keys:
            settings.pop(k, None)
    if axis and axis.kind == "backend":
        settings = {}
    metric = b.metric + (f" ({b.filter})" if b.filter else "")
    row = Row(
        head_label=head_label, kind=b.kind,
        model=file_label(r) if not axis or axis.kind not in ("model", "quantization") else
        (f"{r.model.architecture} {r.model.parameters}" if axis.kind == "quantization" else "(axis)"),
        backend=r.backend.name if not axis or axis.kind != "backend" else "(axis)",
        settings=settings, test=b.test, metric=metric, unit=b.unit, direction=b.direction,
        axis_base=axis.value(b.record) if axis else None, axis_head=axis.value(h.record) if axis else None,
        n_base=len(b.samples), n_head=len(h.samples), base=b.value, head=h.value,
    )
    rule = next((g for g in gate if g.matches(b)), None)
    if b.kind == "accuracy":
        fractions = all(0.0 <= x <= 1.0 for x in (b.value, h.value))
        scale = 100.0 if fractions else 1.0
        row.base, row.head = b.value * scale, h.value * scale
        row.base_sd = b.stderr * scale if b.stderr is not None else None
        row.head_sd = h.stderr * scale if h.stderr is not None else None
        row.n_base, row.n_head = b.n or 1, h.n or 1
        row.change_unit = "pt" if fractions else "%"
        row.change = (h.value - b.value) * 100 if fractions else relative_change(b.value, h.value)
        sig = accuracy_significance(b, h, alpha)
        if sig.ci_low is not None and fractions:
            sig.ci_low, sig.ci_high = sig.ci_low * 100, sig.ci_high * 100
        limit = rule.threshold if rule else acc_threshold
        if b.config_hash != h.config_hash:
            row.note = "task config differs (prompts or data changed): not compared"
    else:
        row.base_sd, row.head_sd = _stddev(b.samples), _stddev(h.samples)
        row.change = relative_change(b.value, h.value)
        sig = perf_significance(b.samples, h.samples, alpha, stat)
        limit = rule.threshold if rule else threshold
    row.method, row.p, row.ci_low, row.ci_high = sig.method, sig.p, sig.ci_low, sig.ci_high
    if limit.unit != row.change_unit:
        which = "points apply to accuracy scores (fractions)" if limit.unit == "pt" else "accuracy changes are in points"
        raise ConfigError(f"threshold {limit.show()} for {b.metric}: {which}; use {'%' if limit.unit == 'pt' else 'pt'}")
    if rule and rule.threshold.sign and rule.threshold.sign == b.direction:
        better = "higher" if b.direction > 0 else "lower"
        worse = "-" if b.direction > 0 else "+"
        raise ConfigError(f"--fail-on {rule.key}:{rule.threshold.show()} would fail on an improvement: {better} {b.metric} is better, "
                          f"so write {rule.key}:{worse}{rule.threshold.amount:g}{'%' if rule.threshold.unit == '%' else 'pt'}")
    row.threshold = limit.show()
    row.verdict, row.flagged = _verdict(row, sig, limit)
    if rule:
        row.gate = f"{rule.key}:{rule.threshold.show()}"
        row.gate_failed = row.regression
    return row


def relative_change(base: float, head: float) -> float | None:
    return (head - base) / abs(base) * 100 if base else None


def _verdict(row: Row, sig: Significance, limit: Threshold) -> tuple[str, bool]:
    if row.note:
        return "not compared", False
    if row.change is None:
        return "untested", False
    if abs(row.change) < limit.amount:
        return "within threshold", False
    if sig.significant is None:
        return "untested", False
    if not sig.significant:
        return "not significant", False
    better = (row.change > 0) == (row.direction > 0)
    return ("improved" if better else "regressed"), True


def gate_failures(comparisons: list[Comparison]) -> list[str]:
    fails = []
    for c in comparisons:
        for r in c.rows:
            if r.gate_failed:
                fails.append(f"{r.test} {r.metric} {_fmt_change(r)} (p={_fmt_p(r.p)}) fails --fail-on {r.gate}")
        fails.extend(w for w in c.warnings if w.startswith("--fail-on ") and "missing from head" in w)
    return fails


def check_gate_matches(comparisons: list[Comparison], rules: list[GateRule]) -> None:
    """A gate that matches nothing would pass silently: refuse it."""
    gated = {r.gate.split(":")[0] for c in comparisons for r in c.rows if r.gate}
    missing = {w.split(":")[0].removeprefix("--fail-on ") for c in comparisons for w in c.warnings if w.startswith("--fail-on ")}
    unmatched = [g.key for g in rules if g.key not in gated and g.key not in missing]
    if unmatched:
        metrics = sorted({r.metric.split(" ")[0] for c in comparisons for r in c.rows})
        raise ConfigError(f"--fail-on {', '.join(unmatched)}: no compared measurement has that metric; metrics here: {', '.join(metrics)}")


# ---------------------------------------------------------------------------- printing


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
    if r.ci_low is None:
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
    from harness.output.printers import _md_table

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
        out.append(_md_table([header[i] for i in shown], md_rows, right))
        stat = ("two-sided Mann-Whitney U on raw samples" if c.stat == "mwu" else "bootstrap interval of head/base excluding 1")
        out.append("")
        out.append(f"Flagged only when the change exceeds its threshold and is significant at alpha {c.alpha:g} "
                   f"(performance: {stat}; accuracy: change against the combined stderr). "
                   "95% CI: bootstrap interval of head/base for performance, of the change for accuracy.")
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


PRINTERS = {"md": markdown, "csv": csv_text, "json": json_text}
