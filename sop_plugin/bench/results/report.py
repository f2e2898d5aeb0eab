"""Markdown report from ``results.json``.

The schema of ``results.json`` lives in :mod:`sop_plugin.bench.results.schema`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sop_plugin.bench.evals.collapse import STAT_LABELS, stat_label
from sop_plugin.bench.results.schema import METRICS, is_number, validate_results

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


def _collapse_table(results: Mapping[str, Any]) -> list[str]:
    """Collapse diagnostics at initialisation and at the end, per method; [] when none were measured."""
    records = {
        m: r["collapse"] for m, r in results["methods"].items() if isinstance(r.get("collapse"), Mapping)
    }
    if not records:
        return []
    present = {
        k
        for c in records.values()
        for h in [c["final"], *c["history"]]
        for k, v in h.items()
        if v is not None
    }
    keys = [k for k in STAT_LABELS if k in present]
    first = next(iter(records.values()))
    k_nn, probe = int(first.get("knn_k", 8)), first.get("probe_images")

    def cell(key: str, value: Any) -> str:
        if not is_number(value):
            return "n/a"
        return f"{value:.1f}" if key.endswith("erank") else f"{value:.3f}"

    lines = [
        "## Collapse diagnostics",
        "",
        f"Teacher on a fixed probe set of {probe} training images "
        '(docs/evaluation.md, "Collapse diagnostics"): '
        "effective rank, mean pairwise cosine and mean cosine to the nearest rows of the L2-normalised head "
        "outputs (DINO/iBOT: the bottleneck before the prototypes), backbone [CLS] features and, for SOP, "
        "the filled class-memory rows; the teacher's distribution (max-probability, entropy / log K); SOP's "
        "mean SE-to-anchor cosine. Epoch 0: initialisation.",
        "",
        "| method | epoch | " + " | ".join(stat_label(k, k_nn) for k in keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for name, rec in records.items():
        rows = []
        history = rec["history"]
        if history and history[0].get("epoch") == 0 and len(history) > 1:
            rows.append(history[0])
        rows.append({**(history[-1] if history else {}), **rec["final"]})
        for row in rows:
            epoch = row.get("epoch")
            shown = f"{epoch:g}" if is_number(epoch) else "final"
            lines.append(f"| {name} | {shown} | " + " | ".join(cell(k, row.get(k)) for k in keys) + " |")
    return [*lines, ""]


_SUITE_HEADERS = {
    "finetune_top1": "fine-tuned top-1 %",
    "seg_miou": "seg mIoU %",
    "seg_pixel_acc": "seg pixel acc %",
}
_CONTROL_NAMES = {"random_init": "random init (control)", "raw_pixels": "raw pixels (control)"}


def suite_rows(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Methods then controls -> their suite numbers, flat (``fewshot_top1.<subset>``), in column order."""
    entries = [*results["methods"].items(), *(results.get("controls") or {}).items()]
    keys = ["finetune_top1"] if any("finetune_top1" in m for _, m in entries) else []
    for _, metrics in entries:
        keys += [
            f"fewshot_top1.{k}" for k in metrics.get("fewshot_top1") or {} if f"fewshot_top1.{k}" not in keys
        ]
    keys += [k for k in ("seg_miou", "seg_pixel_acc") if any(k in m for _, m in entries)]
    rows: dict[str, dict[str, float]] = {}
    for name, metrics in entries:
        few = metrics.get("fewshot_top1") or {}
        row = {}
        for key in keys:
            value = few.get(key.split(".", 1)[1]) if key.startswith("fewshot_top1.") else metrics.get(key)
            if is_number(value):
                row[key] = float(value)
        if row:
            rows[name] = row
    return rows


def _suite_table(results: Mapping[str, Any]) -> list[str]:
    """The suite's table (methods, then the controls), best method per column in bold; [] without a suite."""
    rows = suite_rows(results)
    if not rows:
        return []
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    methods = [m for m in rows if m in results["methods"]]
    best = {k: max((rows[m][k] for m in methods if k in rows[m]), default=None) for k in keys}

    def header(key: str) -> str:
        if key.startswith("fewshot_top1."):
            return f"few-shot {key.split('.', 1)[1]} top-1 %"
        return _SUITE_HEADERS.get(key, key)

    lines = [
        "## Evaluation suite",
        "",
        "Teacher backbone of every method and of the random-init control (the weights every method starts "
        "from); segmentation: a linear 1x1 probe on frozen patch tokens. Best method in bold.",
        "",
        "| backbone | " + " | ".join(header(k) for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, row in rows.items():
        is_method = name in results["methods"]
        cells = [
            "n/a" if k not in row else _cell(k, row[k], is_method and len(methods) > 1 and row[k] == best[k])
            for k in keys
        ]
        lines.append(f"| {_CONTROL_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    emb = results.get("embedding_map")
    if isinstance(emb, Mapping) and emb.get("file"):
        lines += [
            "",
            f"Embedding map (`{emb['file']}`): {emb.get('backend')} of {emb.get('points')} test embeddings "
            "per panel, coloured by class.",
        ]
    return [*lines, ""]


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
    lines = [
        "| method | " + " | ".join(_HEADERS[k] for k in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, metrics in methods.items():
        cells = [_cell(k, metrics[k], best.get(k) == metrics[k]) for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _recipe_table(results: Mapping[str, Any]) -> list[str]:
    """Which knobs each method trained with (``results["recipe"]``; absent in older results)."""
    recipe = results.get("recipe")
    if not recipe:
        return []
    lines = [
        f"## Recipes (`recipe={recipe['name']}`)",
        "",
        "| method | teacher temp | masks | peak lr | KoLeo weight | its own knobs |",
        "|---|---|---|---:|---:|---|",
    ]
    for m, r in recipe["methods"].items():
        lines.append(
            f"| {m} | {r['teacher_temp']} | {r['masks']} | {r['peak_lr']} | "
            f"{r['koleo_weight']} | {r['own']} |"
        )
    return [*lines, ""]


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
        *_recipe_table(results),
        *_suite_table(results),
        *_collapse_table(results),
    ]
    plots = sorted(path.parent.glob("*.png"))
    if plots:
        lines += ["## Plots", ""]
        for png in plots:
            lines += [f"![{png.stem}]({png.name})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
