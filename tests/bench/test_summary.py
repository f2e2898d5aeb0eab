"""``python -m sop_plugin.bench.summary``: seeds aggregated per method, one method taken from another run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sop_plugin.bench.summary import main
from tests.bench.test_plots_report import RESULTS


def _run(tmp_path: Path, name: str, seed: int, knn: float) -> str:
    r = copy.deepcopy(RESULTS) | {"seed": seed}
    for m in r["methods"].values():
        m["knn_top1"] = knn
        m["knn_curve_subset"] = [[0.0, 60.0], [1.0, knn]]
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(r))
    return str(d)


def test_a_method_rerun_alone_replaces_its_column_for_that_seed(tmp_path: Path) -> None:
    seed0 = _run(tmp_path, "seed0", 0, 80.0)
    seed1 = _run(tmp_path, "seed1", 1, 70.0)  # iBOT here is at an old default
    ibot1 = _run(tmp_path, "ibot1", 1, 90.0)  # iBOT alone at the new one
    main([seed0, f"{seed1}:sop,dino", f"{ibot1}:ibot", "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["runs"] == 2
    assert summary["methods"]["ibot"]["knn_top1"]["values"] == [80.0, 90.0]
    assert summary["methods"]["sop"]["knn_top1"]["values"] == [80.0, 70.0]
    assert summary["methods"]["ibot"]["seeds"] == [0, 1]
    assert "| ibot | 85.00 ± 7.07 |" in (tmp_path / "out/summary.md").read_text()


def test_a_method_twice_for_one_seed_or_missing_is_refused(tmp_path: Path) -> None:
    seed1 = _run(tmp_path, "seed1", 1, 70.0)
    ibot1 = _run(tmp_path, "ibot1", 1, 90.0)
    with pytest.raises(SystemExit, match="ibot appears twice for one seed"):
        main([seed1, f"{ibot1}:ibot", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="has no method \\['mae'\\]"):
        main([f"{seed1}:mae", "--out", str(tmp_path / "out")])
