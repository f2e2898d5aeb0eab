"""Aggregate several ``sop-bench`` runs (e.g. seeds) into one summary: JSON, markdown and a plot.

Usage: ``python -m sop_plugin.bench.summary RUN_DIR[:METHOD,...] [RUN_DIR[:METHOD,...] ...] --out DIR``

``RUN_DIR:ibot`` takes only iBOT from that run (e.g. a method re-run alone at a new default beside the
others' runs); one method may appear once per seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sop_plugin.bench.collapse import STAT_LABELS, stat_label
from sop_plugin.bench.plots import plot_learning_curves, plot_metric_bars
from sop_plugin.bench.report import validate_results

METRICS = (
    "knn_top1",
    "linear_top1",
    "map_at_r",
    "recall_at_1",
    "corrupt_knn_top1",
    "finetune_top1",
    "seg_miou",
    "seg_pixel_acc",
    "random_init_knn_top1_subset",
    "step_seconds_median",
    "train_seconds",
    "peak_rss_mb",
)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over runs of every metric, per method; also the per-run values.

    The final collapse diagnostics (``collapse.final``) are summarised under ``collapse.<stat>``.
    """
    methods = sorted({m for r in runs for m in r["methods"]})
    seeds = sorted({r["seed"] for r in runs})
    out: dict[str, Any] = {
        "runs": len(seeds),
        "seeds": seeds,
        "dataset": runs[0]["dataset"],
        "profile": runs[0]["profile"],
        "raw_pixel_knn_top1": runs[0]["raw_pixel_knn_top1"],
        "methods": {},
    }
    for m in methods:
        per = [r["methods"][m] for r in runs if m in r["methods"]]
        stats: dict[str, Any] = {"seeds": [r["seed"] for r in runs if m in r["methods"]]}
        if len(stats["seeds"]) != len(set(stats["seeds"])):
            raise ValueError(f"{m} appears twice for one seed ({stats['seeds']}); pick one run with RUN_DIR:METHOD")
        for key in METRICS:
            vals = [float(p[key]) for p in per if p.get(key) is not None]
            if vals:
                mean, std = _mean_std(vals)
                stats[key] = {"mean": mean, "std": std, "values": vals}
        for key in STAT_LABELS:
            vals = [float(v) for p in per if (v := ((p.get("collapse") or {}).get("final") or {}).get(key)) is not None]
            if vals:
                mean, std = _mean_std(vals)
                stats[f"collapse.{key}"] = {"mean": mean, "std": std, "values": vals}
        out["methods"][m] = stats
    return out


def write_summary(summary: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    cols = [k for k in METRICS if any(k in stats for stats in summary["methods"].values())]  # e.g. no suite
    lines = [
        f"# {summary['profile']} profile on {summary['dataset']}: {summary['runs']} seeds {summary['seeds']}",
        "",
        f"Raw-pixel kNN floor: {summary['raw_pixel_knn_top1']:.2f} %",
        "",
        "| method | " + " | ".join(cols) + " | seeds |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for m, stats in summary["methods"].items():
        cells = [f"{stats[k]['mean']:.2f} ± {stats[k]['std']:.2f}" if k in stats else "n/a" for k in cols]
        cells.append(", ".join(str(seed) for seed in stats["seeds"]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += _collapse_lines(summary)
    lines += [
        "",
        "Mean ± sample std over seeds; accuracies in %, kNN k=20 cosine T=0.07 on the full sets;",
        "`random_init_knn_top1_subset` is the kNN of each method's untrained teacher on the per-epoch subset.",
        "",
        "![kNN per epoch](knn_curve.png)",
        "",
        "![metrics](metrics.png)",
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines))
    curves: dict[str, list[tuple[float, float]]] = {}
    for m in summary["methods"]:
        per_run = [r["methods"][m]["knn_curve_subset"] for r in runs if m in r["methods"]]
        n = min(len(c) for c in per_run)
        curves[m] = [(per_run[0][i][0], statistics.fmean(c[i][1] for c in per_run)) for i in range(n)]
    plot_learning_curves(curves, summary["raw_pixel_knn_top1"], out / "knn_curve.png")
    bars = {
        m: {k: s[k]["mean"] for k in ("knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1")}
        for m, s in summary["methods"].items()
    }
    plot_metric_bars(bars, list(next(iter(bars.values()))), out / "metrics.png")


def _collapse_lines(summary: dict[str, Any]) -> list[str]:
    """The final collapse diagnostics (mean ± std over seeds) as a markdown table; [] when none were measured."""
    keys = [k for k in STAT_LABELS if any(f"collapse.{k}" in s for s in summary["methods"].values())]
    if not keys:
        return []
    lines = [
        "",
        'Collapse diagnostics at the end of training (docs/evaluation.md, "Collapse diagnostics"):',
        "",
        "| method | " + " | ".join(stat_label(k) for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for m, stats in summary["methods"].items():
        cells = []
        for k in keys:
            s = stats.get(f"collapse.{k}")
            digits = 1 if k.endswith("erank") else 3
            cells.append(f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def load_run(spec: str) -> dict[str, Any]:
    """``RUN_DIR`` or ``RUN_DIR:METHOD,...``: the run's results, restricted to those methods."""
    path, _, only = spec.partition(":")
    r = json.loads((Path(path) / "results.json").read_text())
    validate_results(r)
    if only:
        keep = only.split(",")
        missing = [m for m in keep if m not in r["methods"]]
        if missing:
            raise SystemExit(f"summary: {path} has no method {missing} (it has {sorted(r['methods'])})")
        r["methods"] = {m: v for m, v in r["methods"].items() if m in keep}
    return r


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "runs", nargs="+", help="sop-bench output directories (with results.json), RUN_DIR[:METHOD,...]"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = [load_run(spec) for spec in args.runs]
    try:
        summary = summarize(runs)
    except ValueError as e:
        raise SystemExit(f"summary: {e}") from None
    write_summary(summary, runs, args.out)
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
