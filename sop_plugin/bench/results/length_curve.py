"""How long a run would have to train to reach the raw-pixel floor: kNN top-1 against run length.

Usage: ``python -m sop_plugin.bench.results.length_curve RUN_DIR [RUN_DIR ...] --out DIR``

The runs must differ only in ``train.epochs`` (each a whole run with its own schedule, not the
epochs of one run), their seed and their evaluation settings (checked). Per method, the kNN top-1
of the runs, averaged per length, is fitted by least squares with ``a + b * ln(epochs)``; where the
fit rises, the length ``exp((floor - a) / b)`` at which it would reach the raw-pixel kNN floor is the
prediction, and the fewest training seconds per epoch among the runs turn it into training time on
their machine. The band refits the per-length means shifted by one seed standard deviation either
way. With only two lengths the log shape is assumed, not tested: the prediction is an extrapolation,
said so in the output.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from sop_plugin.bench.results.plots import plot_length_curve
from sop_plugin.bench.results.sweep import load_runs, run_cli

KEY = "train.epochs"
#: config entries that may differ between the runs: the seed (several per length), the evaluation
#: (it does not change training), the profile's name, the thread count and which methods ran
ALLOW = ("seed", "sop.seed", "eval.", "profile_name", "threads", "methods")


def fit_log_length(epochs: list[float], scores: list[float]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``score = a + b * ln(epochs)``; needs two distinct lengths."""
    if len(set(epochs)) < 2:
        raise ValueError(f"runs of at least two different {KEY} are needed, got {sorted(set(epochs))}")
    b, a = np.polyfit(np.log(np.asarray(epochs, dtype=float)), np.asarray(scores, dtype=float), 1)
    return float(a), float(b)


def epochs_to_reach(a: float, b: float, target: float) -> float:
    """The length at which ``a + b * ln(epochs)`` reaches ``target`` (inf when the fit does not rise)."""
    if b <= 0:
        return math.inf
    return math.exp((target - a) / b)


def _per_length(epochs: list[float], scores: list[float]) -> dict[float, list[float]]:
    groups: dict[float, list[float]] = {}
    for e, s in zip(epochs, scores):
        groups.setdefault(e, []).append(s)
    return groups


def summarize_lengths(runs: list[tuple[Any, dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Per method: the points, the fit, and the predicted epochs and training time to the floor."""
    floor = float(runs[0][2]["raw_pixel_knn_top1"])
    methods = sorted({m for _, _, r in runs for m in r["methods"]})
    out: dict[str, Any] = {
        "key": KEY,
        "dataset": runs[0][2]["dataset"],
        "raw_pixel_knn_top1": floor,
        "runs": [{"epochs": e, "seed": r["seed"], "profile": r["profile"]} for e, _, r in runs],
        "methods": {},
    }
    for m in methods:
        done = [(float(e), r["methods"][m]) for e, _, r in runs if m in r["methods"]]
        epochs, knn = [e for e, _ in done], [float(v["knn_top1"]) for _, v in done]
        groups = _per_length(epochs, knn)
        lengths = sorted(groups)
        means = {e: statistics.fmean(v) for e, v in groups.items()}
        stds = {e: statistics.stdev(v) if len(v) > 1 else 0.0 for e, v in groups.items()}
        # fitted to the per-length means, so that a length with more seeds does not weigh more
        a, b = fit_log_length(lengths, [means[e] for e in lengths])
        band = []
        for sign in (1.0, -1.0):  # optimistic (+1 sd), then pessimistic (-1 sd)
            ab = fit_log_length(lengths, [means[e] + sign * stds[e] for e in lengths])
            band.append(epochs_to_reach(*ab, floor))
        # the least-disturbed run: sharing the machine only ever slows a run down
        seconds_per_epoch = min(float(v["train_seconds"]) / e for e, v in done)
        needed = epochs_to_reach(a, b, floor)
        out["methods"][m] = {
            "points": [{"epochs": e, "knn_top1": s} for e, s in zip(epochs, knn)],
            "mean_by_epochs": {
                f"{e:g}": {"mean": means[e], "std": stds[e], "n": len(groups[e])} for e in lengths
            },
            "fit": {"a": a, "b_per_ln_epoch": b},
            "epochs_to_floor": needed,
            "epochs_to_floor_band": band,
            "train_seconds_per_epoch": seconds_per_epoch,
            "train_minutes_to_floor": needed * seconds_per_epoch / 60.0,
        }
    return out


def _fmt(x: float, spec: str = ".1f") -> str:
    return "never" if math.isinf(x) else format(x, spec)


def write_length_curve(summary: dict[str, Any], out: Path) -> Path:
    """``length_curve.json``, ``length_curve.md`` and ``length_curve.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "length_curve.json").write_text(json.dumps(summary, indent=2))
    floor = summary["raw_pixel_knn_top1"]
    lengths = sorted({float(r["epochs"]) for r in summary["runs"]})
    lines = [
        f"# kNN top-1 against run length on {summary['dataset']}: when would each method pass raw pixels?",
        "",
        f"Fit per method: kNN = a + b ln(epochs) over {len(summary['runs'])} runs at "
        f"{', '.join(f'{e:g}' for e in lengths)} epochs; raw-pixel kNN floor {floor:.2f} %.",
        "An extrapolation: with "
        + ("only two lengths" if len(lengths) == 2 else f"{len(lengths)} lengths")
        + " the log shape is assumed; the band refits the per-length means ± one seed standard deviation.",
        "",
        "| method | kNN by epochs (mean ± sd, n) | b per ln(epoch) | epochs to floor (band) | "
        "train s / epoch (min) | train min to floor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m, s in summary["methods"].items():
        by = "; ".join(
            f"{e}: {v['mean']:.2f} ± {v['std']:.2f} ({v['n']})" for e, v in s["mean_by_epochs"].items()
        )
        lo, hi = sorted(s["epochs_to_floor_band"])
        lines.append(
            f"| {m} | {by} | {s['fit']['b_per_ln_epoch']:.2f} | {_fmt(s['epochs_to_floor'])} "
            f"({_fmt(lo)}–{_fmt(hi)}) | {s['train_seconds_per_epoch']:.0f} | "
            f"{_fmt(s['train_minutes_to_floor'], '.0f')} |"
        )
    lines += ["", "![length curve](length_curve.png)", ""]
    (out / "length_curve.md").write_text("\n".join(lines))
    plot_length_curve(
        {m: [(p["epochs"], p["knn_top1"]) for p in s["points"]] for m, s in summary["methods"].items()},
        {
            m: (s["fit"]["a"], s["fit"]["b_per_ln_epoch"], s["epochs_to_floor"])
            for m, s in summary["methods"].items()
        },
        floor,
        out / "length_curve.png",
    )
    return out / "length_curve.md"


def main(argv: list[str] | None = None) -> None:
    run_cli(
        argv,
        __doc__.splitlines()[0],
        lambda args: summarize_lengths(load_runs(args.runs, KEY, allow=ALLOW)),
        write_length_curve,
    )


if __name__ == "__main__":
    main()
