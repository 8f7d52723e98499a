"""A record as comparable measurements: one metric of one test or task of one measured
configuration, with its raw samples, its direction and its unit. compare and trend join
records on these."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from harness.core.record import DIRECTION, LOWER_IS_BETTER_ACCURACY, RunRecord

SINGLE_VALUE_PERF = ("peak_rss_mib", "peak_uss_mib", "peak_vram_mib", "gpu_energy_j", "cpu_energy_j")
METRIC_UNITS = {"tps": "t/s", "ms": "ms", "mib": "MiB", "j": "J"}


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
