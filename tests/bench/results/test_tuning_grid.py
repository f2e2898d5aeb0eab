"""``sop_plugin/bench/results/tuning_grid.py``: the equal tuning grid.

The same points for every method, KoLeo at each method's own best point, the choice by held-out
kNN, and what it writes (runs replaced by a table of scores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sop_plugin.bench.results import tuning_grid

#: method -> (lr, temp, koleo) -> held-out kNN; every other point scores 50
SCORES = {
    "sop": {(4e-3, 0.04, 0.0): 71.6, (4e-3, 0.04, 0.1): 74.2},
    "dino": {(5e-4, 0.07, 0.0): 70.9, (5e-4, 0.07, 0.1): 70.1},
}


def test_grid_offers_every_method_the_same_points_and_picks_its_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = tuning_grid
    calls: list[tuple[str, list[str]]] = []

    def fake_run_point(out: Path, overrides: list[str]) -> dict[str, Any]:
        calls.append((out.name, overrides))
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        method = values["methods"].strip("[]")
        temp_key = "sop.teacher_temp" if method == "sop" else f"{method}.teacher_temp"
        point = (
            float(values[f"{method}.optim.base_lr"]),
            float(values[temp_key]),
            float(values[f"{method}.koleo_weight"]),
        )
        knn = SCORES[method].get(point, 50.0)
        return {
            "knn_top1": knn,
            "linear_top1": knn + 1,
            "collapse": {"final": {"head_erank": 10 * point[2] + 5}},
        }

    monkeypatch.setattr(grid, "run_point", fake_run_point)
    assert grid.main([str(tmp_path), "--methods", "sop", "dino", "--images", "640", "--holdout", "100"]) == 0

    names = [name for name, _ in calls]
    assert names[:4] == [
        "sop_lr0.0005_t0.04_k0",
        "sop_lr0.0005_t0.07_k0",
        "sop_lr0.004_t0.04_k0",
        "sop_lr0.004_t0.07_k0",
    ]
    assert names[4] == "sop_lr0.004_t0.04_k0.1"  # KoLeo at SOP's best point
    assert names[9] == "dino_lr0.0005_t0.07_k0.1"  # and at DINO's own
    assert len(names) == 10
    for _, overrides in calls:  # every point scored on held-out training images, never the test set
        assert "eval.holdout=100" in overrides and "train.limit_train_images=640" in overrides
        assert (
            "temps.warmup_teacher_temp_steps=6" in overrides
        )  # 500/937 of the 10 steps, as in profile=quick
    sop_point = calls[0][1]
    assert "sop.teacher_temp=0.04" in sop_point and "sop.warmup_teacher_temp=0.04" in sop_point  # constant

    summary = json.loads((tmp_path / "grid.json").read_text())
    assert (summary["choice"]["sop"]["base_lr"], summary["choice"]["sop"]["koleo_weight"]) == (4e-3, 0.1)
    assert (summary["choice"]["dino"]["teacher_temp"], summary["choice"]["dino"]["koleo_weight"]) == (
        0.07,
        0.0,
    )
    table = (tmp_path / "grid.md").read_text()
    assert "| sop | 0.004 | 0.04 | 0.1 | 74.20 | 75.20 | 6.0 |" in table and table.count("**yes**") == 2
    assert (tmp_path / "grid.png").stat().st_size > 1000


@pytest.mark.parametrize("method", ["sop", "dino", "ibot"])
def test_grid_point_overrides_reach_the_method_over_its_tuned_defaults(
    method: str, tmp_path: Path, tiny_data: Path
) -> None:
    from sop_plugin.bench.train.method_settings import method_settings, recipe_summary
    from tests.tinydata import bench_config

    grid = tuning_grid
    cfg = bench_config(tmp_path, tiny_data, grid.point_overrides(method, 1e-3, 0.05, 0.2))
    assert cfg["methods"] == [method]
    summary = recipe_summary(method_settings(cfg, method), 10, cfg["train"]["batch_size"])
    assert (
        summary["peak_lr"] == f"{1e-3 * cfg['train']['batch_size'] / 256:.3g}"
        and summary["koleo_weight"] == "0.2"
    )
    assert summary["teacher_temp"] == ("0.05" if method == "sop" else "0.04 -> 0.05")
