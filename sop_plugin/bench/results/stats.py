"""Paired statistics over seeds: the difference of two series, its 95 % intervals and a verdict.

Why paired: every seed gives both methods the same data order, crops and initialisation, so the
per-seed difference removes what the seed does to both. The interval is Student's t over seeds
(``scipy.stats.t``); a percentile bootstrap over the seeds is added because with 2-5 seeds the
normality that t assumes cannot be checked. With 3 seeds the bootstrap has only 10 distinct
resamples and is narrower than t; the verdict therefore comes from the t interval only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
#: fixed, so that a summary regenerated from the same runs is identical
BOOTSTRAP_SEED = 0

Verdict = Literal["ahead", "behind", "level"]


def t_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``diffs``; ``None`` with fewer than two values.

    Identical values (zero spread) give the point ``(mean, mean)``: there is nothing to be unsure of.
    """
    if len(diffs) < 2:
        return None
    x = np.asarray(diffs, dtype=float)
    mean = float(x.mean())
    sem = float(stats.sem(x))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def prediction_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Where one more seed would land with probability ``confidence``; ``None`` with fewer than two values.

    Student's t with n - 1 degrees of freedom around the mean, scale ``sd * sqrt(1 + 1/n)``: the spread
    of a single new run, not of the mean. Used to ask whether one run of another host is one of ours.
    """
    if len(values) < 2:
        return None
    x = np.asarray(values, dtype=float)
    scale = float(x.std(ddof=1)) * math.sqrt(1.0 + 1.0 / len(x))
    if scale == 0.0:
        return float(x.mean()), float(x.mean())
    low, high = stats.t.interval(confidence, len(x) - 1, loc=float(x.mean()), scale=scale)
    return float(low), float(high)


def bootstrap_interval(
    diffs: Sequence[float], confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean over seeds (resampling seeds); ``None`` below two values."""
    if len(diffs) < 2:
        return None
    x = np.asarray(diffs, dtype=float)
    if float(x.std()) == 0.0:
        mean = float(x.mean())
        return mean, mean
    res = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def verdict(interval: tuple[float, float] | None) -> Verdict:
    """``ahead`` when the interval lies entirely above 0, ``behind`` entirely below, else ``level``."""
    if interval is None:
        return "level"
    low, high = interval
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "level"


def flip(v: Verdict) -> Verdict:
    """The verdict of the other side of a pair (b against a)."""
    if v == "ahead":
        return "behind"
    if v == "behind":
        return "ahead"
    return "level"


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any] | None:
    """``a - b`` over the seeds both have: per-seed differences, mean, t and bootstrap intervals, verdict.

    ``None`` when no seed is shared. The result is JSON-ready (intervals as ``[low, high]`` or ``None``).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    t_ci = t_interval(diffs)
    boot_ci = bootstrap_interval(diffs)
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": float(np.mean(diffs)),
        "ci95_t": list(t_ci) if t_ci else None,
        "ci95_bootstrap": list(boot_ci) if boot_ci else None,
        "verdict": verdict(t_ci),
    }


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "std": std}


def is_finite_number(value: Any) -> bool:
    """A real number that is not a bool, NaN or infinite (what a metric may be)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)
