"""Aggregate several ``sop-bench`` runs (e.g. seeds) into one summary: JSON, markdown and plots.

Usage: python -m sop_plugin.bench.results.summary RUN_DIR[:METHOD,...] [RUN_DIR[:METHOD,...] ...] --out DIR

``RUN_DIR:ibot`` takes only iBOT from that run (e.g. a method re-run alone at a new default beside the
others' runs); one method may appear once per seed. The controls (random-init backbone, raw pixels)
of a seed come from the first run of that seed, in the order given, that has them.

``summary.json`` holds, over seeds: mean ± std per method and control; per metric and pair of methods
the paired differences with 95 % intervals and a verdict (:mod:`sop_plugin.bench.results.stats`); each
method's gap to each control; time ratios within each run (never a mean time over runs, which may
come from different machines); and every run's machine. Runs recorded under different profile names
(e.g. ``standard train.epochs=6`` beside ``long``) keep every name in ``profile``, in the order given.
It is the single source of the result tables in the READMEs (:mod:`sop_plugin.bench.results.tables`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sop_plugin.bench.evals.collapse import STAT_LABELS, stat_label
from sop_plugin.bench.results import markdown
from sop_plugin.bench.results.aggregate import (
    OTHER,
    QUALITY,
    aggregate_controls,
    describe_series,
    method_series,
    ordered_methods,
)
from sop_plugin.bench.results.compare import compare_methods, control_gaps, timing_ratios
from sop_plugin.bench.results.plots import plot_learning_curves, plot_metric_bars
from sop_plugin.bench.results.schema import validate_results

#: per-method keys aggregated as mean ± std over seeds (timings are not: see ``timing_ratios``)
METRICS = (*QUALITY, *OTHER)


def _method_stats(runs: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Mean ± std over seeds of every metric and final collapse statistic of one method."""
    seeds = [r["seed"] for r in runs if method in r["methods"]]
    if len(seeds) != len(set(seeds)):
        raise ValueError(f"{method} appears twice for one seed ({seeds}); pick one run with RUN_DIR:METHOD")
    stats: dict[str, Any] = {"seeds": sorted(seeds)}
    for key in METRICS:
        series = method_series(runs, method, key)
        if series:
            stats[key] = describe_series(series)
    for key in STAT_LABELS:
        series = method_series(runs, method, f"collapse.final.{key}")
        if series:
            stats[f"collapse.{key}"] = describe_series(series)
    return stats


def _sources(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run as given: its directory, seed, the methods taken from it and its machine (if recorded)."""
    return [
        {
            "run": r["source"],
            "seed": r["seed"],
            "methods": ordered_methods(list(r["methods"])),
            "controls": bool(r.get("controls")),
            "machine": r.get("machine"),
        }
        for r in runs
    ]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary dict (see the module docstring); ``ValueError`` when a method appears twice for a seed."""
    runs = [r if "source" in r else {**r, "source": f"run {i}"} for i, r in enumerate(runs)]
    methods = ordered_methods({m for r in runs for m in r["methods"]})
    seeds = sorted({r["seed"] for r in runs})
    return {
        "runs": len(seeds),
        "seeds": seeds,
        "dataset": runs[0]["dataset"],
        "profile": " / ".join(dict.fromkeys(r["profile"] for r in runs)),
        "raw_pixel_knn_top1": runs[0]["raw_pixel_knn_top1"],
        "sources": _sources(runs),
        "methods": {m: _method_stats(runs, m) for m in methods},
        "controls": aggregate_controls(runs),
        "comparisons": compare_methods(runs, methods),
        "control_gaps": control_gaps(runs, methods),
        "timing_ratios": timing_ratios(runs, methods),
        "untimed": [r["source"] for r in runs if r.get("untimed")],
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: machines, the results with controls, collapse, verdicts, control gaps, time ratios."""
    cols = [k for k in METRICS if any(k in stats for stats in summary["methods"].values())]
    floor = summary["raw_pixel_knn_top1"]
    lines = [
        f"# {summary['profile']} profile on {summary['dataset']}: {summary['runs']} seeds {summary['seeds']}",
        "",
        f"Raw-pixel kNN floor: {floor:.2f} %" if floor is not None else "Raw-pixel kNN floor: not measured",
        "",
        "Runs and their machines:",
        "",
        *markdown.machines_table(summary),
        "",
        "Mean ± sample std over seeds; bold where the verdicts below say ahead of every other method:",
        "",
        *markdown.results_table(summary, cols),
        *_collapse_lines(summary),
        "",
        "Paired differences over seeds; the verdict comes from the t interval (ahead: entirely above 0,",
        "behind: entirely below, else level; level with one seed). The bootstrap resamples seeds:",
        "with 3 seeds it has 10 distinct resamples and is narrower than t, shown as an addition:",
        "",
        *markdown.verdict_table(summary),
        "",
        "Gap of each method to each control (method − control; ahead = passes the control):",
        "",
        *markdown.control_gap_table(summary),
        "",
        "Time ratios within each run (one machine, methods one after the other); times of different",
        "runs are not averaged, as the runs may come from different machines or loads:",
        "",
        *markdown.timing_table(summary),
        "",
        "Accuracies in %, kNN k=20 cosine T=0.07 on the full sets; `kNN (subset)` is the last per-epoch",
        "kNN on the fixed subset, against the untrained teacher's on the same subset (random-init row).",
        "",
        "![kNN per epoch](knn_curve.png)",
        "",
        "![metrics](metrics.png)",
        "",
    ]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> None:
    """``summary.json``, ``summary.md``, ``knn_curve.png`` and ``metrics.png`` in ``out``.

    ``knn_curve.png`` plots the mean per-epoch kNN.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    curves: dict[str, list[tuple[float, float]]] = {}
    for m in summary["methods"]:
        per_run = [r["methods"][m]["knn_curve_subset"] for r in runs if m in r["methods"]]
        n = min(len(c) for c in per_run)
        curves[m] = [(per_run[0][i][0], statistics.fmean(c[i][1] for c in per_run)) for i in range(n)]
    plot_learning_curves(curves, summary["raw_pixel_knn_top1"], out / "knn_curve.png")
    bars = {
        m: {
            k: s[k]["mean"]
            for k in ("knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1")
        }
        for m, s in summary["methods"].items()
    }
    plot_metric_bars(bars, list(next(iter(bars.values()))), out / "metrics.png")


def _collapse_lines(summary: dict[str, Any]) -> list[str]:
    """The final collapse diagnostics (mean ± std over seeds) as a markdown table.

    [] when none were measured.
    """
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
    """``RUN_DIR`` or ``RUN_DIR:METHOD,...``: the run's results, with ``source``.

    With ``:METHOD,...``, restricted to those methods.
    """
    path, _, only = spec.partition(":")
    r = json.loads((Path(path) / "results.json").read_text())
    validate_results(r)
    if only:
        keep = only.split(",")
        missing = [m for m in keep if m not in r["methods"]]
        if missing:
            raise SystemExit(f"summary: {path} has no method {missing} (it has {sorted(r['methods'])})")
        r["methods"] = {m: v for m, v in r["methods"].items() if m in keep}
    r["source"] = path
    return r


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", help="sop-bench output directories (with results.json), RUN_DIR[:METHOD,...]"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--untimed",
        nargs="*",
        default=[],
        metavar="RUN_DIR",
        help="runs that shared the cores with other work: their times give no ratio",
    )
    args = parser.parse_args(argv)
    runs = [load_run(spec) for spec in args.runs]
    untimed = {str(Path(u)) for u in args.untimed}
    for r in runs:
        r["untimed"] = str(Path(r["source"])) in untimed
    try:
        summary = summarize(runs)
    except ValueError as e:
        raise SystemExit(f"summary: {e}") from None
    write_summary(summary, runs, args.out)
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
