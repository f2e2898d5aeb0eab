"""``benchmarks/step_times.py`` times every step of a real (tiny) benchmark fit and writes steps.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.tinydata import TINY_BENCH

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_times.py"


@pytest.mark.slow
def test_step_times_writes_every_step(tiny_data: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("step_times", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "steps"
    module.main(["sop", str(out), *TINY_BENCH, f"data.path={tiny_data}"])
    data = json.loads((out / "steps.json").read_text())
    assert data["steps"] == len(data["times"]) == 3
    assert data["median"] <= data["p90"] <= data["max"] <= data["sum"] < data["fit_seconds"]
    assert len(data["per_epoch_median"]) == 1
