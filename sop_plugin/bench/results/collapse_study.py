"""Collapse curves of several runs side by side: which settings collapse the embedding space, and when.

Usage: python -m sop_plugin.bench.results.collapse_study RUN_DIR... --out DIR [--labels L...]
e.g.   python -m sop_plugin.bench.results.collapse_study \
           runs/study/sop_lr0.0005_t0.04_k0 runs/study/sop_lr0.004_t0.04_k0 \
           --out docs/results/collapse-study

Each RUN_DIR is a finished ``sop-bench`` run of one method (its ``results.json``); the run's label is its
folder name unless ``--labels`` gives one per run. Writes ``DIR/collapse_study.png`` (one panel per
statistic, one line per run over training; ``sop_plugin.bench.results.plots.plot_collapse``), ``study.md`` and
``study.json`` (per run: kNN / linear top-1 and each statistic at initialisation and at the end). Use
``eval.collapse_every_n_steps`` in the runs for curves finer than one point per epoch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sop_plugin.bench.evals.collapse import stat_label
from sop_plugin.bench.results.plots import plot_collapse

#: the statistics of the table, in order (SOP's memory and SE columns stay empty for DINO/iBOT)
TABLE_STATS = (
    "head_erank",
    "head_knn_cos",
    "backbone_erank",
    "teacher_max_prob",
    "sop_se_cos",
    "memory_erank",
    "memory_knn_cos",
)


def load_run(run: Path) -> dict[str, Any]:
    """The one method of ``run/results.json`` with its collapse record.

    Raises a ValueError naming the run otherwise.
    """
    path = run / "results.json"
    if not path.is_file():
        raise ValueError(f"{run}: no results.json (is it a finished sop-bench run?)")
    methods = json.loads(path.read_text())["methods"]
    if len(methods) != 1:
        raise ValueError(f"{run}: holds {len(methods)} methods; give one run per method (methods=[m])")
    method, result = next(iter(methods.items()))
    if not (result.get("collapse") or {}).get("history"):
        raise ValueError(f"{run}: no collapse history (eval.collapse_probe_images was 0?)")
    return {"method": method, **result}


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """label -> method, scores, and every table statistic at initialisation and at the end."""
    out: dict[str, Any] = {}
    for label, r in runs.items():
        history = r["collapse"]["history"]
        out[label] = {
            "method": r["method"],
            "knn_top1": r.get("knn_top1"),
            "linear_top1": r.get("linear_top1"),
            "points": len(history),
            "steps": history[-1].get("step"),
            **{key: {"init": history[0].get(key), "final": history[-1].get(key)} for key in TABLE_STATS},
        }
    return out


def markdown(summary: dict[str, Any], k: int) -> str:
    """The study table: scores, then each statistic as init -> end."""

    def fmt(v: Any, key: str) -> str:
        if v is None:
            return ""
        return f"{v:.3f}" if ("cos" in key or "prob" in key) else f"{v:.2f}" if key == "score" else f"{v:.1f}"

    head = [
        "run",
        "kNN top-1",
        "linear top-1",
        *(stat_label(key, k) + " (init → end)" for key in TABLE_STATS),
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, s in summary.items():
        cells = [label, fmt(s["knn_top1"], "score"), fmt(s["linear_top1"], "score")]
        for key in TABLE_STATS:
            init, final = fmt(s[key]["init"], key), fmt(s[key]["final"], key)
            cells.append(f"{init} → {final}" if init and final else final)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the run folders' names)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels: {len(args.labels)} labels for {len(args.runs)} runs; give one per run")
    labels = args.labels or [run.name for run in args.runs]
    runs = {label: load_run(run) for label, run in zip(labels, args.runs, strict=True)}
    k = int(next(iter(runs.values()))["collapse"].get("knn_k", 8))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    plot_collapse(
        {label: r["collapse"]["history"] for label, r in runs.items()}, args.out / "collapse_study.png", k=k
    )
    (args.out / "study.json").write_text(
        json.dumps({"runs": [str(r) for r in args.runs], "study": summary}, indent=2)
    )
    (args.out / "study.md").write_text(markdown(summary, k))
    print((args.out / "study.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
