"""Stage 3 of the equal tuning budget: is each method's choice at the edge of the grid?

Usage: ``python -m sop_plugin.bench.results.tuning_refine GRID_JSON OUT_DIR [--lrs 8e-3] [--seeds 0 1]``

``GRID_JSON`` is the ``grid.json`` of ``tuning_grid.py`` (its protocol, ``settings.common``, is reused
as is). For every method, the same points: its chosen teacher temperature and KoLeo weight at its chosen
learning rate and at each of ``--lrs``, each run at every ``--seeds`` seed (seeds, because one seed's
held-out kNN moves by about a point, more than the gaps it has to decide). The final choice per method
is the point with the highest held-out kNN averaged over the seeds. Writes ``OUT_DIR/refine.json``
(every run, the per-point means, the choice), ``refine.md`` and ``refine.png``; a run whose
``results.json`` says done is not run again (``OUT_DIR/seed<S>/<point>``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sop_plugin.bench.results.tuning_grid import SPREAD_KEYS, _row, point_overrides, run_point

#: the columns of a point that identify it
POINT_KEYS = ("method", "base_lr", "teacher_temp", "koleo_weight")


def candidates(choice: dict[str, Any], lrs: list[float]) -> list[tuple[float, float, float]]:
    """The grid's choice and the same point at each of ``lrs`` (lr, temp, koleo), the choice first."""
    t, k = choice["teacher_temp"], choice["koleo_weight"]
    points = [(choice["base_lr"], t, k)]
    return points + [(lr, t, k) for lr in lrs if lr != choice["base_lr"]]


def mean_points(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point: the seeds' held-out kNN and linear top-1 (mean, each seed) and mean spread."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        grouped.setdefault(tuple(r[k] for k in POINT_KEYS), []).append(r)
    rows = []
    for key, rs in grouped.items():
        row: dict[str, Any] = dict(zip(POINT_KEYS, key))
        row["seeds"] = [r["seed"] for r in rs]
        row["knn_by_seed"] = [r["knn_top1"] for r in rs]
        row["knn_top1"] = statistics.fmean(row["knn_by_seed"])
        row["linear_top1"] = statistics.fmean(r["linear_top1"] for r in rs)
        for s in SPREAD_KEYS:
            values = [r[s] for r in rs if r.get(s) is not None]
            row[s] = statistics.fmean(values) if values else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="grid.json of tuning_grid.py")
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--lrs", nargs="+", type=float, default=[8e-3], help="optim.base_lr values beside the choice"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args(argv)
    grid = json.loads(args.grid.read_text())
    common = grid["settings"]["common"]
    runs: list[dict[str, Any]] = []
    for m, choice in grid["choice"].items():
        for lr, t, k in candidates(choice, args.lrs):
            for seed in args.seeds:
                out = args.out / f"seed{seed}" / f"{m}_lr{lr:g}_t{t:g}_k{k:g}"
                r = run_point(out, [*point_overrides(m, lr, t, k), f"seed={seed}", *common])
                runs.append({**_row(m, lr, t, k, r), "seed": seed})
    points = mean_points(runs)
    choice = {
        m: max((p for p in points if p["method"] == m), key=lambda p: p["knn_top1"]) for m in grid["choice"]
    }
    summary = {
        "settings": {"grid": str(args.grid), "lrs": args.lrs, "seeds": args.seeds, "common": common},
        "runs": runs,
        "points": points,
        "choice": choice,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refine.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "refine.md").write_text(_markdown(points, choice))
    _plot(runs, points, args.out / "refine.png")
    print((args.out / "refine.md").read_text())
    return 0


def _markdown(points: list[dict[str, Any]], choice: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| method | base_lr | teacher temp | KoLeo | held-out kNN by seed | mean kNN | mean linear | "
        "head eff. rank | memory eff. rank | chosen |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for p in points:
        mark = "**yes**" if p == choice[p["method"]] else ""
        by_seed = " / ".join(f"{v:.2f}" for v in p["knn_by_seed"])
        ranks = " | ".join("" if p[k] is None else f"{p[k]:.1f}" for k in ("head_erank", "memory_erank"))
        lines.append(
            f"| {p['method']} | {p['base_lr']:g} | {p['teacher_temp']:g} | {p['koleo_weight']:g} | "
            f"{by_seed} | {p['knn_top1']:.2f} | {p['linear_top1']:.2f} | {ranks} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def _plot(runs: list[dict[str, Any]], points: list[dict[str, Any]], path: Path) -> None:
    """Held-out kNN against the learning rate per method: each seed as a dot, the mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in dict.fromkeys(p["method"] for p in points):
        mine = sorted((p for p in points if p["method"] == m), key=lambda p: p["base_lr"])
        (line,) = ax.plot([p["base_lr"] for p in mine], [p["knn_top1"] for p in mine], marker="s", label=m)
        seeds = [r for r in runs if r["method"] == m]
        ax.scatter(
            [r["base_lr"] for r in seeds], [r["knn_top1"] for r in seeds], color=line.get_color(), s=12
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("optim.base_lr (teacher temp and KoLeo at each method's grid choice)")
    ax.set_ylabel("held-out kNN top-1 (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
