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
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.core.environment import hardware_key
from harness.core.errors import ConfigError, HarnessError
from harness.core.record import RunRecord
from harness.output.measurements import Measurement, measurements
from harness.output.significance import Significance, Stat, accuracy_significance, perf_significance


AXIS_KINDS = ("model", "quantization", "backend")


class CompareError(HarnessError):
    pass


class GateFailed(HarnessError):
    """--fail-on found a flagged regression; the table has been printed already."""

    exit_code = 1


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
    why_untested: str | None = None  # why a change beyond its threshold could not be tested

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
    if row.verdict == "untested":
        row.why_untested = sig.why_untested or "no relative change (the base is 0)"
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


def check_gate_matches(comparisons: list[Comparison], rules: list[GateRule]) -> None:
    """A gate that matches nothing would pass silently: refuse it."""
    gated = {r.gate.split(":")[0] for c in comparisons for r in c.rows if r.gate}
    missing = {w.split(":")[0].removeprefix("--fail-on ") for c in comparisons for w in c.warnings if w.startswith("--fail-on ")}
    unmatched = [g.key for g in rules if g.key not in gated and g.key not in missing]
    if unmatched:
        metrics = sorted({r.metric.split(" ")[0] for c in comparisons for r in c.rows})
        raise ConfigError(f"--fail-on {', '.join(unmatched)}: no compared measurement has that metric; metrics here: {', '.join(metrics)}")
