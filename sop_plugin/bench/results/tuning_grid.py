"""The equal tuning budget: the same grid of settings for every method, scored on held-out training images.

Usage: python -m sop_plugin.bench.results.tuning_grid OUT_DIR [--methods sop dino ibot]
           [--images 20000] [-- OVERRIDES]

Per method, in two rounds with the same points for every method:
1. learning rate x teacher temperature (``--lrs`` x ``--temps``), KoLeo off;
2. at that method's best point, each ``--koleo`` weight > 0.
Every point is one ``sop-bench methods=[m]`` run on the first ``--images`` training images, evaluated on
the last ``--holdout`` training images (``eval.holdout``: the test set is never seen while tuning), with
the teacher-temperature warm-up scaled to the same fraction of the run as in ``profile=quick``.
The score is the held-out kNN top-1. Writes ``OUT_DIR/grid.json`` (every point, the choice per method),
``grid.md`` and ``grid.png``; a point whose ``results.json`` says done is not run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the collapse statistics (``methods.<m>.collapse.final``) copied into the grid
SPREAD_KEYS = ("head_erank", "head_knn_cos", "memory_erank", "memory_knn_cos")
#: ``profile=quick``: the DINO/iBOT teacher-temperature warm-up covers 500 of its 937 steps
QUICK_WARMUP_FRACTION = 500 / 937


def temperature_overrides(method: str, temp: float) -> list[str]:
    """Teacher temperature ``temp`` in ``method``'s own form: SOP constant, DINO/iBOT warm-up 0.04 -> temp."""
    if method == "sop":
        return [f"sop.teacher_temp={temp}", f"sop.warmup_teacher_temp={temp}"]
    return [f"{method}.teacher_temp={temp}"]


def point_overrides(method: str, lr: float, temp: float, koleo: float) -> list[str]:
    """One grid point, set in the method's own section (where its tuned defaults live)."""
    return [
        f"methods=[{method}]",
        f"{method}.optim.base_lr={lr}",
        f"{method}.koleo_weight={koleo}",
        *temperature_overrides(method, temp),
    ]


def run_point(out: Path, overrides: list[str]) -> dict[str, Any]:
    """One ``sop-bench`` run (skipped when ``out/results.json`` says done); its method's results."""
    results = out / "results.json"
    if not _done(results):
        cmd = [sys.executable, "-m", "sop_plugin.bench.cli", f"out={out}", *overrides]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(
            cmd,
            check=True,
            env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")},
        )
    methods = json.loads(results.read_text())["methods"]
    return next(iter(methods.values()))


def _done(results: Path) -> bool:
    if not results.is_file():
        return False
    methods = json.loads(results.read_text()).get("methods", {})
    return bool(methods) and all(r.get("status", "done") == "done" for r in methods.values())


def _row(method: str, lr: float, temp: float, koleo: float, r: dict[str, Any]) -> dict[str, Any]:
    collapse = r.get("collapse", {}) or {}
    final = collapse.get("final", collapse) if isinstance(collapse, dict) else {}
    return {
        "method": method,
        "base_lr": lr,
        "teacher_temp": temp,
        "koleo_weight": koleo,
        "knn_top1": r["knn_top1"],
        "linear_top1": r.get("linear_top1"),
        **{key: final.get(key) if isinstance(final, dict) else None for key in SPREAD_KEYS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--methods", nargs="+", default=["sop", "dino", "ibot"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 4e-3], help="optim.base_lr values")
    parser.add_argument(
        "--temps", nargs="+", type=float, default=[0.04, 0.07], help="final teacher temperatures"
    )
    parser.add_argument(
        "--koleo", nargs="+", type=float, default=[0.1], help="KoLeo weights tried at the best point"
    )
    parser.add_argument("--images", type=int, default=20000, help="training images per run")
    parser.add_argument("--holdout", type=int, default=10000, help="last training images used for scoring")
    parser.add_argument("extra", nargs="*", help="further sop-bench overrides for every run (after --)")
    args = parser.parse_args(argv)
    steps = args.images // 64
    common = [
        f"train.limit_train_images={args.images}",
        f"eval.holdout={args.holdout}",
        "eval.suite=[]",
        "eval.corruptions=[]",
        "eval.every_epoch=false",
        "eval.controls=false",
        f"temps.warmup_teacher_temp_steps={math.ceil(QUICK_WARMUP_FRACTION * steps)}",
        *args.extra,
    ]
    rows: list[dict[str, Any]] = []
    choice: dict[str, dict[str, Any]] = {}
    for m in args.methods:
        points = [(lr, t, 0.0) for lr in args.lrs for t in args.temps]
        mine = []
        for lr, t, k in points:
            r = run_point(args.out / f"{m}_lr{lr:g}_t{t:g}_k{k:g}", [*point_overrides(m, lr, t, k), *common])
            mine.append(_row(m, lr, t, k, r))
        best = max(mine, key=lambda row: row["knn_top1"])
        for k in args.koleo:
            lr, t = best["base_lr"], best["teacher_temp"]
            r = run_point(args.out / f"{m}_lr{lr:g}_t{t:g}_k{k:g}", [*point_overrides(m, lr, t, k), *common])
            mine.append(_row(m, lr, t, k, r))
        rows += mine
        choice[m] = max(mine, key=lambda row: row["knn_top1"])
    summary = {
        "settings": {**vars(args), "out": str(args.out), "common": common},
        "points": rows,
        "choice": choice,
    }
    (args.out / "grid.json").write_text(json.dumps(summary, indent=2))
    (args.out / "grid.md").write_text(_markdown(rows, choice))
    _plot(rows, args.out / "grid.png")
    print((args.out / "grid.md").read_text())
    return 0


def _spread_cell(key: str, value: float | None) -> str:
    """A collapse statistic as a table cell: cosines to 3 decimals, ranks to 1, empty when not measured."""
    if value is None:
        return ""
    if "cos" in key:
        return f"{value:.3f}"
    return f"{value:.1f}"


def _markdown(rows: list[dict[str, Any]], choice: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| method | base_lr | teacher temp | KoLeo | held-out kNN top-1 | linear top-1 | head eff. rank | "
        "head 8-NN cos | memory eff. rank | memory 8-NN cos | chosen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        mark = "**yes**" if r == choice[r["method"]] else ""
        lin = "" if r["linear_top1"] is None else f"{r['linear_top1']:.2f}"
        spread = " | ".join(_spread_cell(k, r[k]) for k in SPREAD_KEYS)
        lines.append(
            f"| {r['method']} | {r['base_lr']:g} | {r['teacher_temp']:g} | {r['koleo_weight']:g} | "
            f"{r['knn_top1']:.2f} | {lin} | {spread} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per method: held-out kNN top-1 per point (top) and the head's effective rank there (bottom; SOP's
    class memory beside it), so that a reader sees which settings collapse the embedding space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(2, len(methods), figsize=(4 * len(methods), 6.5), sharey="row", squeeze=False)
    lo = min(r["knn_top1"] for r in rows)
    for col, m in enumerate(methods):
        mine = [r for r in rows if r["method"] == m]
        x = list(range(len(mine)))
        labels = [f"lr {r['base_lr']:g}\nT {r['teacher_temp']:g}\nKoLeo {r['koleo_weight']:g}" for r in mine]
        top, bottom = axes[0][col], axes[1][col]
        top.bar(x, [r["knn_top1"] for r in mine], color="tab:blue")
        top.set_title(m)
        top.set_ylim(max(0.0, lo - 5), None)
        for key, offset, color, name in (
            ("head_erank", -0.2, "tab:orange", "head"),
            ("memory_erank", 0.2, "tab:green", "class memory"),
        ):
            values = [r.get(key) for r in mine]
            if any(v is not None for v in values):
                bottom.bar([i + offset for i in x], [v or 0.0 for v in values], 0.4, color=color, label=name)
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks(x, labels, fontsize=7)
    axes[0][0].set_ylabel("held-out kNN top-1 (%)")
    axes[1][0].set_ylabel("effective rank at the end")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
