"""Aggregate ``sop-bench`` runs that differ in one setting (a hyper-parameter search) into a table and a plot.

Usage: ``python -m sop_plugin.bench.results.sweep RUN_DIR [RUN_DIR ...] --key optim.lr --out DIR``

Every run directory holds ``config.json`` and ``results.json``; the runs must differ only
in ``--key`` (checked), so that every method was searched over the same grid.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sop_plugin.bench.flat import flatten_config
from sop_plugin.bench.results.plots import plot_sweep
from sop_plugin.bench.results.schema import validate_results

METRICS = ("knn_top1", "linear_top1")
#: config entries that legitimately differ between runs of one search (output place, display only)
IGNORED = ("out", "trainer.enable_progress_bar")


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            raise KeyError(f"config has no {dotted!r}")
        cfg = cfg[part]
    return cfg


def load_runs(
    dirs: list[Path], key: str, allow: tuple[str, ...] = ()
) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """(value of ``key``, config, results) per run, sorted by value; refuses runs differing elsewhere.

    ``allow``: further config keys (prefixes) that may differ, e.g. ``("seed",)`` for several seeds per value.
    """
    runs = []
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        res = json.loads((d / "results.json").read_text())
        validate_results(res)
        runs.append((_get(cfg, key), cfg, res))
    runs.sort(key=lambda r: r[0])
    base_value, base_cfg = runs[0][0], flatten_config(runs[0][1])
    for value, cfg, _ in runs[1:]:
        flat = flatten_config(cfg)
        # a difference is allowed only where both runs hold their swept value (interpolated copies of it)
        diff = sorted(
            k
            for k in set(base_cfg) | set(flat)
            if base_cfg.get(k) != flat.get(k)
            and not k.startswith(IGNORED + allow)
            and not (base_cfg.get(k) == base_value and flat.get(k) == value)
        )
        if diff:
            raise ValueError(f"runs differ in {diff[:6]} besides {key}: not one search over {key}")
    return runs


def summarize_sweep(runs: list[tuple[Any, dict[str, Any], dict[str, Any]]], key: str) -> dict[str, Any]:
    """Per method: the metric at every value, and the value with the best kNN top-1."""
    values = [v for v, _, _ in runs]
    methods = sorted({m for _, _, r in runs for m in r["methods"]})
    out: dict[str, Any] = {
        "key": key,
        "values": values,
        "profile": runs[0][2]["profile"],
        "dataset": runs[0][2]["dataset"],
        "seed": runs[0][2]["seed"],
        "raw_pixel_knn_top1": runs[0][2]["raw_pixel_knn_top1"],
        "methods": {},
    }
    for m in methods:
        per = {metric: [float(r["methods"][m][metric]) for _, _, r in runs] for metric in METRICS}
        best = max(range(len(values)), key=lambda i: per["knn_top1"][i])
        out["methods"][m] = {**per, "best_value": values[best], "best_knn_top1": per["knn_top1"][best]}
    return out


def write_sweep(summary: dict[str, Any], out: Path) -> Path:
    """``sweep.json``, ``sweep.md`` and ``sweep.png`` (kNN top-1 against the value) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    key, values = summary["key"], summary["values"]
    lines = [
        f"# Search over `{key}`: {summary['profile']} profile on {summary['dataset']}, "
        f"seed {summary['seed']}",
        "",
        "Same grid for every method; everything else equal. Accuracies in %.",
        "",
        "| method | " + " | ".join(f"{key}={v:g} kNN / linear" for v in values) + " | best (kNN) |",
        "|---" * (len(values) + 2) + "|",
    ]
    for m, s in summary["methods"].items():
        cells = [f"{k:.2f} / {lin:.2f}" for k, lin in zip(s["knn_top1"], s["linear_top1"])]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {s['best_value']:g} |")
    lines += [
        "",
        f"Raw-pixel kNN floor: {summary['raw_pixel_knn_top1']:.2f} %",
        "",
        "![sweep](sweep.png)",
        "",
    ]
    (out / "sweep.md").write_text("\n".join(lines))
    plot_sweep(
        values,
        {m: s["knn_top1"] for m, s in summary["methods"].items()},
        key,
        "kNN top-1",
        out / "sweep.png",
        floor=summary["raw_pixel_knn_top1"],
    )
    return out / "sweep.md"


def run_cli(
    argv: list[str] | None,
    description: str,
    summarize: Callable[[argparse.Namespace], dict[str, Any]],
    write: Callable[[dict[str, Any], Path], Path],
    configure: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> None:
    """The shared command line of the run aggregators: RUN_DIR... --out DIR; a bad set of runs exits 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="+", type=Path, help="sop-bench output directories")
    parser.add_argument("--out", required=True, type=Path)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        summary = summarize(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote {write(summary, args.out)}")


def main(argv: list[str] | None = None) -> None:
    run_cli(
        argv,
        __doc__.splitlines()[0],
        lambda args: summarize_sweep(load_runs(args.runs, args.key), args.key),
        write_sweep,
        lambda parser: parser.add_argument(
            "--key", required=True, help="the swept config key, e.g. optim.lr"
        ),
    )


if __name__ == "__main__":
    main()
