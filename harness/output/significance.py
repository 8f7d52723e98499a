"""Whether a difference between two sides of a comparison is more than noise.

Performance: a two-sided Mann-Whitney U test on the raw per-repetition samples, or a
bootstrap interval of the head/base ratio of means that must exclude 1. Accuracy: the
change against the combined standard error of the two scores."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from harness.output.measurements import Measurement

Stat = Literal["mwu", "bootstrap"]


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


def percentile_samples(q: float) -> int:
    """The fewest samples from which a tail percentile (q above 50) says more than the maximum:
    with fewer, numpy's linear q-th percentile lies between the two largest samples. p90 needs
    10, p99 100; the median and the maximum need one."""
    return 1 if q <= 50 or q >= 100 else math.ceil(100 / (100 - q) - 1e-9)
