"""Markdown report from ``results.json``, plus the schema check for that dict.

Schema (accuracies and retrieval scores in percent)::

    {"dataset": str, "seed": int, "profile": str,
     "raw_pixel_knn_top1": float | None,
     "methods": {"<name>": {"knn_top1", "linear_top1", "map_at_r", "recall_at_1",
                            "corrupt_knn_top1", "train_seconds",
                            "step_seconds_median", "peak_rss_mb": float,
                            "epochs": int}}}

Extra keys are allowed and ignored, so the runner may store more (curves, the step-time tail
``step_seconds_p90`` / ``step_seconds_max`` and ``step_seconds_sum``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS: tuple[str, ...] = (
    "knn_top1",
    "linear_top1",
    "map_at_r",
    "recall_at_1",
    "corrupt_knn_top1",
    "train_seconds",
    "step_seconds_median",
    "peak_rss_mb",
    "epochs",
)
"""Per-method keys, in table column order."""

HIGHER_IS_BETTER: frozenset[str] = frozenset(METRICS[:5])
"""Columns where the best method is shown in bold."""

_HEADERS = {
    "knn_top1": "kNN top-1 %",
    "linear_top1": "linear top-1 %",
    "map_at_r": "mAP@R %",
    "recall_at_1": "R@1 %",
    "corrupt_knn_top1": "corrupt kNN top-1 %",
    "train_seconds": "train s",
    "step_seconds_median": "step s (median)",
    "peak_rss_mb": "peak RSS MB",
    "epochs": "epochs",
}


def _is_number(value: Any) -> bool:
    """int or float, but not bool (a bool is an int to Python, never a metric here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_results(d: Any) -> None:
    """Raise ``ValueError`` naming the first missing or ill-typed key of a results dict."""
    if not isinstance(d, Mapping):
        raise ValueError(f"results must be a dict, got {type(d).__name__}")
    top_types: dict[str, tuple[type, ...]] = {"dataset": (str,), "seed": (int,), "profile": (str,)}
    for key, types in top_types.items():
        if key not in d:
            raise ValueError(f"results: missing key {key!r}")
        if not isinstance(d[key], types) or isinstance(d[key], bool):
            raise ValueError(f"results[{key!r}] must be {types[0].__name__}, got {d[key]!r}")
    if "raw_pixel_knn_top1" not in d:
        raise ValueError("results: missing key 'raw_pixel_knn_top1'")
    floor = d["raw_pixel_knn_top1"]
    if floor is not None and not _is_number(floor):
        raise ValueError(f"results['raw_pixel_knn_top1'] must be a number or None, got {floor!r}")
    methods = d.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("results: 'methods' must be a non-empty dict of method -> metrics")
    for name, metrics in methods.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"results['methods'][{name!r}] must be a dict")
        for key in METRICS:
            if key not in metrics:
                raise ValueError(f"results['methods'][{name!r}]: missing key {key!r}")
            value = metrics[key]
            ok = isinstance(value, int) and not isinstance(value, bool)
            if key != "epochs":
                ok = _is_number(value)
            if not ok:
                kind = "int" if key == "epochs" else "number"
                raise ValueError(f"results['methods'][{name!r}][{key!r}] must be {kind}, got {value!r}")


def _cell(key: str, value: float | int, bold: bool) -> str:
    """Format one table cell; seconds get more digits than percentages."""
    if key == "epochs":
        text = str(value)
    elif isinstance(value, float) and math.isnan(value):
        text = "n/a"
    elif key == "step_seconds_median":
        text = f"{value:.3f}"
    elif key in ("train_seconds", "peak_rss_mb"):
        text = f"{value:.0f}"
    else:
        text = f"{value:.2f}"
    return f"**{text}**" if bold else text


def _table(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown method x metric table, best value of each accuracy column in bold."""
    best = {}
    for key in HIGHER_IS_BETTER:
        values = [m[key] for m in methods.values() if not math.isnan(m[key])]
        best[key] = max(values) if values and len(methods) > 1 else None
    lines = ["| method | " + " | ".join(_HEADERS[k] for k in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for name, metrics in methods.items():
        cells = [_cell(k, metrics[k], best.get(k) == metrics[k]) for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write the markdown report to ``path`` (a directory means ``path/report.md``).

    Validates ``results`` first. Every ``*.png`` in the report's directory is
    embedded (sorted by name), so plots written beside it appear without this
    module knowing their names.
    """
    validate_results(results)
    path = Path(path)
    if path.is_dir():
        path = path / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)

    floor = results["raw_pixel_knn_top1"]
    floor_line = (
        f"Raw-pixel floor (cosine 20-NN on flattened pixels): **{floor:.2f} %** kNN top-1."
        if floor is not None
        else "Raw-pixel floor: not measured."
    )
    lines = [
        f"# SOP benchmark: {results['dataset']}",
        "",
        f"Profile `{results['profile']}`, seed {results['seed']}. "
        "Accuracies and retrieval scores in percent; best in bold.",
        "",
        floor_line,
        "",
        *_table(results["methods"]),
        "",
    ]
    plots = sorted(path.parent.glob("*.png"))
    if plots:
        lines += ["## Plots", ""]
        for png in plots:
            lines += [f"![{png.stem}]({png.name})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
