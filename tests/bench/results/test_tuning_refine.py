"""``sop_plugin/bench/results/tuning_refine.py``: stage 3 of the equal tuning budget.

The same extra learning rates for every method at its grid choice, every point at every seed, the
choice by the mean over seeds (runs replaced by a table of scores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sop_plugin.bench.results import tuning_refine

#: method -> (lr, seed) -> held-out kNN
SCORES = {
    "sop": {(4e-3, 0): 74.2, (4e-3, 1): 75.0, (8e-3, 0): 72.5, (8e-3, 1): 73.0},
    "ibot": {(4e-3, 0): 74.9, (4e-3, 1): 76.0, (8e-3, 0): 74.9, (8e-3, 1): 76.4},  # ties at seed 0
}
GRID = {
    "settings": {"common": ["train.limit_train_images=640", "eval.holdout=100"]},
    "choice": {m: {"base_lr": 4e-3, "teacher_temp": 0.04, "koleo_weight": 0.1} for m in SCORES},
}


@pytest.fixture
def refine() -> Any:
    """The tuning driver's module."""
    return tuning_refine


def test_refine_runs_every_method_at_the_same_lrs_and_seeds_and_picks_the_best_mean(
    refine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_run_point(out: Path, overrides: list[str]) -> dict[str, Any]:
        calls.append((f"{out.parent.name}/{out.name}", overrides))
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        method = values["methods"].strip("[]")
        knn = SCORES[method][(float(values[f"{method}.optim.base_lr"]), int(values["seed"]))]
        return {"knn_top1": knn, "linear_top1": knn + 1, "collapse": {"final": {"head_erank": 30.0}}}

    monkeypatch.setattr(refine, "run_point", fake_run_point)
    grid_json = tmp_path / "grid.json"
    grid_json.write_text(json.dumps(GRID))
    assert refine.main([str(grid_json), str(tmp_path / "out"), "--lrs", "8e-3", "--seeds", "0", "1"]) == 0

    names = [name for name, _ in calls]
    assert names[:4] == [
        "seed0/sop_lr0.004_t0.04_k0.1",
        "seed1/sop_lr0.004_t0.04_k0.1",
        "seed0/sop_lr0.008_t0.04_k0.1",
        "seed1/sop_lr0.008_t0.04_k0.1",
    ]
    assert len(names) == 8
    for _, overrides in calls:  # the grid's own protocol, the method's temperature and KoLeo
        assert "eval.holdout=100" in overrides and "train.limit_train_images=640" in overrides
        assert any(o.endswith("koleo_weight=0.1") for o in overrides)
    summary = json.loads((tmp_path / "out/refine.json").read_text())
    assert summary["choice"]["sop"]["base_lr"] == 4e-3  # 74.6 against 72.75
    assert (
        summary["choice"]["ibot"]["base_lr"] == 8e-3
    )  # a tie at seed 0, decided by the mean (75.65 > 75.45)
    assert summary["choice"]["ibot"]["knn_by_seed"] == [74.9, 76.4]
    table = (tmp_path / "out/refine.md").read_text()
    assert "| ibot | 0.008 | 0.04 | 0.1 | 74.90 / 76.40 | 75.65 | 76.65 | 30.0 |  | **yes** |" in table
    assert (tmp_path / "out/refine.png").stat().st_size > 1000


def test_candidates_put_the_choice_first_and_skip_its_own_lr(refine: Any) -> None:
    choice = {"base_lr": 4e-3, "teacher_temp": 0.07, "koleo_weight": 0.0}
    assert refine.candidates(choice, [4e-3, 8e-3, 2e-3]) == [
        (4e-3, 0.07, 0.0),
        (8e-3, 0.07, 0.0),
        (2e-3, 0.07, 0.0),
    ]
