"""Per-seed values of the methods and of the controls, read from loaded ``results.json`` dicts.

Why a module of its own: the summary's mean ± std, its paired comparisons and its control gaps all
start from the same "value of metric K for method M at seed S"; reading it in one place keeps the
three consistent. Each run dict carries ``source`` (its ``RUN_DIR`` as given to the summary).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sop_plugin.bench.results.stats import is_finite_number, mean_std

#: per-method quality metrics, all "higher is better", compared between methods; dotted = nested key
QUALITY = (
    "knn_top1",
    "linear_top1",
    "map_at_r",
    "recall_at_1",
    "corrupt_knn_top1",
    "finetune_top1",
    "fewshot_top1.1pct",
    "fewshot_top1.10pct",
    "seg_miou",
    "seg_pixel_acc",
    "knn_top1_subset",
)
#: aggregated as mean ± std but not compared (machine-independent, not "better" in one direction)
OTHER = ("peak_rss_mb",)
#: compared only within a run (one machine): never averaged over runs
TIMING = ("step_seconds_median", "train_seconds")

RANDOM_INIT = "random_init"
RAW_PIXELS = "raw_pixels"
#: per control, the keys it has; each is compared with the method metric of the same name
CONTROL_KEYS: dict[str, tuple[str, ...]] = {
    RANDOM_INIT: QUALITY[5:],  # fine-tuning, few-shot, segmentation, per-epoch kNN
    RAW_PIXELS: ("knn_top1", "seg_miou", "seg_pixel_acc"),
}

#: the method of interest first, then its baselines; any other method after them, by name
METHOD_ORDER = ("sop", "dino", "ibot")


def ordered_methods(names: set[str] | list[str]) -> list[str]:
    """Methods in :data:`METHOD_ORDER`, others alphabetically after them."""
    known = [m for m in METHOD_ORDER if m in names]
    return known + sorted(set(names) - set(METHOD_ORDER))


def lookup(entry: Mapping[str, Any] | None, key: str) -> float | None:
    """``entry[key]`` with a dotted key for nested dicts; ``knn_top1_subset`` is the last per-epoch kNN point.

    ``None`` when absent or not a finite number.
    """
    if entry is None:
        return None
    if key == "knn_top1_subset":
        curve = entry.get("knn_curve_subset") or []
        value: Any = curve[-1][1] if curve else None
    else:
        value = entry
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    return float(value) if is_finite_number(value) else None


def method_series(runs: list[dict[str, Any]], method: str, key: str) -> dict[int, float]:
    """``{seed: value}`` of one method's metric over the runs that have it."""
    series: dict[int, float] = {}
    for r in runs:
        value = lookup(r["methods"].get(method), key)
        if value is not None:
            series[r["seed"]] = value
    return series


def control_value(run: Mapping[str, Any], control: str, key: str) -> float | None:
    """One control's value in one run: ``controls`` of the suite, the run-level raw-pixel kNN, or the
    random-init kNN on the per-epoch subset that every method entry repeats (same untrained teacher)."""
    if control == RAW_PIXELS and key == "knn_top1":
        floor = run.get("raw_pixel_knn_top1")
        return float(floor) if is_finite_number(floor) else None
    if control == RANDOM_INIT and key == "knn_top1_subset":
        values = [lookup(m, "random_init_knn_top1_subset") for m in run["methods"].values()]
        return next((v for v in values if v is not None), None)
    return lookup((run.get("controls") or {}).get(control), key)


def control_series(
    runs: list[dict[str, Any]], control: str, key: str
) -> tuple[dict[int, float], dict[int, str]]:
    """``{seed: value}`` of a control and ``{seed: source}``.

    Per seed, the first run (in the given order) that has it.
    """
    series: dict[int, float] = {}
    sources: dict[int, str] = {}
    for r in runs:
        if r["seed"] in series:
            continue
        value = control_value(r, control, key)
        if value is not None:
            series[r["seed"]] = value
            sources[r["seed"]] = r["source"]
    return series, sources


def describe_series(series: Mapping[int, float]) -> dict[str, Any]:
    """Mean, sample std, and the seeds with their values (parallel lists, JSON-ready)."""
    seeds = sorted(series)
    values = [series[s] for s in seeds]
    return {**mean_std(values), "values": values, "seeds": seeds}


def aggregate_controls(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every control metric found in the runs as mean ± std over seeds, with the run each seed came from."""
    out: dict[str, dict[str, Any]] = {}
    for control, keys in CONTROL_KEYS.items():
        for key in keys:
            series, sources = control_series(runs, control, key)
            if series:
                runs_by_seed = [sources[s] for s in sorted(series)]
                out.setdefault(control, {})[key] = {**describe_series(series), "runs": runs_by_seed}
    return out
