"""Tests for sop_plugin.bench.results.plots and sop_plugin.bench.results.report."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sop_plugin.bench.results.plots import plot_learning_curves, plot_metric_bars, plot_sop_grid
from sop_plugin.bench.results.report import write_report
from sop_plugin.bench.results.schema import METRICS, validate_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(knn: float) -> dict[str, float | int]:
    return {
        "knn_top1": knn,
        "linear_top1": knn + 1,
        "map_at_r": 40.0,
        "recall_at_1": 80.0,
        "corrupt_knn_top1": knn - 5,
        "train_seconds": 120.0,
        "step_seconds_median": 0.05,
        "peak_rss_mb": 900.0,
        "epochs": 3,
    }


RESULTS = {
    "dataset": "fashion-mnist",
    "seed": 0,
    "profile": "cpu-smoke",
    "raw_pixel_knn_top1": 84.59,
    "methods": {"sop": _metrics(86.5), "dino": _metrics(85.0), "ibot": _metrics(85.25)},
}


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png_files(tmp_path: Path) -> None:
    curves = {"sop": [(1, 70.0), (2, 75.5)], "dino": [(1, 68.0), (2, 74.0)]}
    assert _is_png(plot_learning_curves(curves, 84.59, tmp_path / "curves.png"))
    assert _is_png(plot_learning_curves(curves, None, tmp_path / "curves_nofloor.png"))
    bars = {m: v for m, v in RESULTS["methods"].items()}
    assert _is_png(plot_metric_bars(bars, ["knn_top1", "linear_top1"], tmp_path / "bars.png"))
    gray = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    support = torch.randint(0, 256, (3, 4, 1, 8, 8), dtype=torch.uint8)
    assert _is_png(plot_sop_grid(gray, support, tmp_path / "sop_gray.png", torch.rand(3, 4)))
    rgb = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    support_rgb = torch.randint(0, 256, (2, 5, 3, 8, 8), dtype=torch.uint8)
    assert _is_png(plot_sop_grid(rgb, support_rgb, tmp_path / "sub" / "sop_rgb.png"))
    with pytest.raises(ValueError, match="similarities"):
        plot_sop_grid(gray, support, tmp_path / "bad.png", torch.rand(3, 2))


def test_report_has_table_rows_floor_and_plot_links(tmp_path: Path) -> None:
    (tmp_path / "curves.png").write_bytes(PNG_MAGIC)
    path = write_report(RESULTS, tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "84.59" in text and "fashion-mnist" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 4  # header + one row per method
    assert table[1].startswith("| sop | **86.50** | **87.50** |")
    assert table[2].startswith("| dino | 85.00 |")
    assert table[2].endswith("| 120 | 0.050 | 900 | 3 |")
    assert "![curves](curves.png)" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("seed"), "'seed'"),
        (lambda d: d.__setitem__("raw_pixel_knn_top1", "84"), "raw_pixel_knn_top1"),
        (lambda d: d["methods"]["dino"].pop("map_at_r"), "'dino'.*'map_at_r'"),
        (lambda d: d["methods"]["ibot"].__setitem__("epochs", 3.0), "'ibot'.*'epochs'"),
        (lambda d: d["methods"]["sop"].__setitem__("knn_top1", True), "'sop'.*'knn_top1'"),
        (lambda d: d.__setitem__("methods", {}), "methods"),
    ],
)
def test_validate_results_names_the_bad_key(edit, message: str) -> None:
    validate_results(RESULTS)
    broken = copy.deepcopy(RESULTS)
    edit(broken)
    with pytest.raises(ValueError, match=message):
        validate_results(broken)


def test_metric_order_is_the_documented_schema() -> None:
    assert set(METRICS) == set(_metrics(0.0))


def _sweep_run(root: Path, lr: float, knn: dict[str, float], seed: int = 0) -> Path:
    import json

    run = root / f"lr{lr:g}"
    run.mkdir()
    cfg = {"seed": seed, "out": str(run), "optim": {"lr": lr, "min_lr": 1e-5}, "sop": {"copy_of_lr": lr}}
    results = copy.deepcopy(RESULTS)
    for method, value in knn.items():
        results["methods"][method] = _metrics(value)
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_sweep_table_best_value_and_plot(tmp_path: Path) -> None:
    from sop_plugin.bench.results.sweep import load_runs, summarize_sweep, write_sweep

    runs = [
        _sweep_run(tmp_path, 2e-3, {"sop": 70.0, "dino": 75.0, "ibot": 71.0}),
        _sweep_run(tmp_path, 5e-4, {"sop": 72.0, "dino": 73.0, "ibot": 74.0}),
    ]
    summary = summarize_sweep(load_runs(runs, "optim.lr"), "optim.lr")
    assert summary["values"] == [5e-4, 2e-3]  # sorted
    assert summary["methods"]["sop"]["knn_top1"] == [72.0, 70.0]
    assert summary["methods"]["sop"]["linear_top1"] == [73.0, 71.0]
    assert {m: s["best_value"] for m, s in summary["methods"].items()} == {
        "sop": 5e-4,
        "dino": 2e-3,
        "ibot": 5e-4,
    }
    write_sweep(summary, tmp_path / "out")
    table = (tmp_path / "out" / "sweep.md").read_text()
    assert "| sop | 72.00 / 73.00 | 70.00 / 71.00 | 0.0005 |" in table
    assert _is_png(tmp_path / "out" / "sweep.png")


def test_sweep_refuses_runs_that_differ_elsewhere(tmp_path: Path) -> None:
    from sop_plugin.bench.results.sweep import load_runs

    runs = [_sweep_run(tmp_path, 2e-3, {}), _sweep_run(tmp_path, 5e-4, {}, seed=1)]
    with pytest.raises(ValueError, match=r"runs differ in \['seed'\] besides optim.lr"):
        load_runs(runs, "optim.lr")


def _length_run(root: Path, epochs: int, seed: int, knn: float, depth: int = 4) -> Path:
    import json

    run = root / f"e{epochs}s{seed}d{depth}"
    run.mkdir()
    cfg = {
        "seed": seed,
        "out": str(run),
        "train": {"epochs": epochs},
        "model": {"depth": depth},
        "eval": {"x": epochs},
    }
    results = copy.deepcopy(RESULTS)
    results["seed"] = seed
    results["methods"] = {"sop": {**_metrics(knn), "train_seconds": 100.0 * epochs}}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_length_curve_predicts_the_length_that_reaches_the_floor(tmp_path: Path) -> None:
    import math

    from sop_plugin.bench.results.length_curve import ALLOW, KEY, summarize_lengths, write_length_curve
    from sop_plugin.bench.results.sweep import load_runs

    # kNN = 80 + 2 ln(E) at the seed means (seeds 1 apart at 3 epochs): the floor 84.59 at E = exp(2.295)
    runs = [_length_run(tmp_path, 1, 0, 80.0)]
    runs += [_length_run(tmp_path, 3, s, 80.0 + 2 * math.log(3) + d) for s, d in ((0, -0.5), (1, 0.5))]
    summary = summarize_lengths(load_runs(runs, KEY, allow=ALLOW))
    sop = summary["methods"]["sop"]
    assert sop["fit"]["b_per_ln_epoch"] == pytest.approx(2.0)
    assert sop["epochs_to_floor"] == pytest.approx(math.exp(4.59 / 2))
    assert sop["train_minutes_to_floor"] == pytest.approx(math.exp(4.59 / 2) * 100 / 60)
    optimistic, pessimistic = sop["epochs_to_floor_band"]
    assert optimistic < sop["epochs_to_floor"] < pessimistic
    write_length_curve(summary, tmp_path / "out")
    assert (
        "| sop | 1: 80.00 ± 0.00 (1); 3: 82.20 ± 0.71 (2) | 2.00 | 9.9 ("
        in (tmp_path / "out" / "length_curve.md").read_text()
    )
    assert _is_png(tmp_path / "out" / "length_curve.png")


def test_length_curve_refuses_runs_that_differ_in_training(tmp_path: Path) -> None:
    from sop_plugin.bench.results.length_curve import ALLOW, KEY, fit_log_length, main
    from sop_plugin.bench.results.sweep import load_runs

    runs = [_length_run(tmp_path, 1, 0, 80.0), _length_run(tmp_path, 3, 0, 82.0, depth=6)]
    with pytest.raises(ValueError, match=r"runs differ in \['model.depth'\] besides train.epochs"):
        load_runs(runs, KEY, allow=ALLOW)
    with pytest.raises(SystemExit) as exit_info:  # the command line: exit 2, nothing written
        main([str(r) for r in runs] + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="two different train.epochs"):
        fit_log_length([3.0, 3.0], [82.0, 83.0])
