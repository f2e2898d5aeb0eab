"""Markdown tables from a ``summary.json`` dict.

The tables: results with controls, verdicts, control gaps, timing, machines.

Why one module: the summary's own ``summary.md`` and the tables regenerated into the READMEs
(:mod:`sop_plugin.bench.results.tables`) print the same numbers and must print them the same way. A number
is bold only where the verdicts say its method is ahead of every other method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sop_plugin.bench.results.aggregate import RANDOM_INIT, RAW_PIXELS
from sop_plugin.bench.results.compare import ahead_of_all
from sop_plugin.bench.results.machine import describe

LABELS = {
    "knn_top1": "kNN",
    "linear_top1": "linear",
    "map_at_r": "mAP@R",
    "recall_at_1": "R@1",
    "corrupt_knn_top1": "corrupted kNN",
    "finetune_top1": "fine-tune",
    "fewshot_top1.1pct": "few-shot 1 %",
    "fewshot_top1.10pct": "few-shot 10 %",
    "seg_miou": "seg mIoU",
    "seg_pixel_acc": "seg pixel acc",
    "knn_top1_subset": "kNN (subset)",
    "peak_rss_mb": "peak RSS MB",
    "collapse.head_erank": "head eff. rank (end)",
    "step_seconds_median": "median step s",
    "train_seconds": "train s",
}
METHOD_LABELS = {"sop": "SOP", "dino": "DINO", "ibot": "iBOT"}
CONTROL_LABELS = {RANDOM_INIT: "random-init backbone", RAW_PIXELS: "raw pixels"}


def label(key: str) -> str:
    """The column header of a metric key."""
    return LABELS.get(key, key)


def method_label(method: str) -> str:
    """SOP, DINO, iBOT; other names as they are."""
    return METHOD_LABELS.get(method, method)


def _digits(key: str) -> int:
    return 1 if key.endswith("erank") or key == "peak_rss_mb" else 2


def cell(stat: dict[str, Any] | None, key: str, bold: bool = False, row_seeds: int | None = None) -> str:
    """``mean ± std`` (the value alone for one seed), bold when asked; ``(n=K)`` when this number has
    other seeds than its row."""
    if not stat:
        return ""
    d = _digits(key)
    text = f"{stat['mean']:.{d}f}"
    if len(stat["seeds"]) > 1:
        text += f" ± {stat['std']:.{d}f}"
    if bold:
        text = f"**{text}**"
    if row_seeds is not None and len(stat["seeds"]) != row_seeds:
        text += f" (n={len(stat['seeds'])})"
    return text


def _row(name: str, stats: dict[str, Any], keys: Sequence[str], bold: set[str]) -> str:
    found = [stats[k] for k in keys if stats.get(k)]
    seeds = sorted({s for st in found for s in st["seeds"]})
    cells = [cell(stats.get(k), k, k in bold, len(seeds)) for k in keys]
    return f"| {name} | " + " | ".join(cells) + f" | {', '.join(str(s) for s in seeds)} |"


def results_table(
    summary: dict[str, Any], keys: Sequence[str], extra: Sequence[tuple[str, dict[str, Any]]] = ()
) -> list[str]:
    """Methods, then ``extra`` rows (label, stats; never bold), then the controls.

    A seeds column at the end.
    """
    methods = list(summary["methods"])
    lines = [
        "| | " + " | ".join(label(k) for k in keys) + " | seeds |",
        "|---" + "|---:" * len(keys) + "|---|",
    ]
    for m, stats in summary["methods"].items():
        bold = {k for k in keys if ahead_of_all(summary.get("comparisons", {}), k, m, methods)}
        lines.append(_row(method_label(m), stats, keys, bold))
    for name, stats in extra:
        lines.append(_row(name, stats, keys, set()))
    for control, stats in summary.get("controls", {}).items():
        if any(k in stats for k in keys):
            lines.append(_row(CONTROL_LABELS.get(control, control), stats, keys, set()))
    return lines


def signed(x: float) -> str:
    """``+0.12`` / ``−0.12``; a nonzero value that would round to 0.00 keeps two significant digits,
    so that an interval bound just above 0 does not read as 0."""
    text = f"{x:+.2f}" if abs(x) >= 0.005 or x == 0 else f"{x:+.2g}"
    return text.replace("-", "−")


def _interval(ci: Sequence[float] | None) -> str:
    if ci is None:
        return "n/a (1 seed)"
    return f"[{signed(ci[0])}, {signed(ci[1])}]"


def _paired_cells(p: dict[str, Any]) -> str:
    diffs = " / ".join(signed(d) for d in p["diffs"])
    boot = _interval(p["ci95_bootstrap"])
    return f"{diffs} | {signed(p['mean'])} | {_interval(p['ci95_t'])} | {boot} | {p['verdict']}"


def verdict_table(summary: dict[str, Any], keys: Sequence[str] | None = None) -> list[str]:
    """Metric x pair: per-seed differences, mean, 95 % t and bootstrap intervals, verdict (from t)."""
    comparisons = summary.get("comparisons", {})
    lines = [
        "| metric | pair (a − b) | per seed | mean | 95 % CI (t) | 95 % CI (bootstrap) | verdict for a |",
        "|---|---|---|---:|---|---|---|",
    ]
    for key in keys if keys is not None else list(comparisons):
        for pair, p in comparisons.get(key, {}).items():
            a, _, b = pair.partition("-")
            lines.append(f"| {label(key)} | {method_label(a)} − {method_label(b)} | {_paired_cells(p)} |")
    return lines


def control_gap_table(summary: dict[str, Any]) -> list[str]:
    """Method x control x metric: the gap (method − control) per seed, its intervals and verdict."""
    lines = [
        "| method | control | metric | per seed | mean gap | 95 % CI (t) | 95 % CI (bootstrap) | verdict |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    for m, controls in summary.get("control_gaps", {}).items():
        for control, metrics in controls.items():
            for key, p in metrics.items():
                name = CONTROL_LABELS.get(control, control)
                lines.append(f"| {method_label(m)} | {name} | {label(key)} | {_paired_cells(p)} |")
    return lines


def timing_table(summary: dict[str, Any]) -> list[str]:
    """Per-run time ratios (one machine each); no mean over runs, on purpose."""
    lines = ["| ratio | measure | run | seed | ratio |", "|---|---|---|---:|---:|"]
    for pair, measures in summary.get("timing_ratios", {}).items():
        a, _, b = pair.partition("/")
        for key, rows in measures.items():
            for row in rows:
                name = f"{method_label(a)} / {method_label(b)}"
                lines.append(
                    f"| {name} | {label(key)} | `{row['run']}` | {row['seed']} | {row['ratio']:.3f} |"
                )
    untimed = summary.get("untimed") or []
    if untimed:
        listed = ", ".join(f"`{run}`" for run in untimed)
        lines += ["", f"Not timed (the run shared the cores with other work): {listed}."]
    return lines


def machines_table(summary: dict[str, Any]) -> list[str]:
    """Every run of the summary with its seed, the methods taken from it and its machine."""
    lines = ["| run | seed | methods | machine |", "|---|---:|---|---|"]
    for src in summary.get("sources", []):
        methods = ", ".join(method_label(m) for m in src["methods"])
        lines.append(f"| `{src['run']}` | {src['seed']} | {methods} | {describe(src.get('machine'))} |")
    return lines
