"""``sop_plugin/bench/results/step_times.py`` on a real (tiny) benchmark fit.

It times every step of the fit and writes steps.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sop_plugin.bench.results import step_times
from tests.tinydata import TINY_BENCH


@pytest.mark.slow
def test_step_times_writes_every_step(tiny_data: Path, tmp_path: Path) -> None:
    module = step_times
    out = tmp_path / "steps"
    module.main(["sop", str(out), *TINY_BENCH, f"data.path={tiny_data}"])
    data = json.loads((out / "steps.json").read_text())
    assert data["steps"] == len(data["times"]) == 3
    assert data["median"] <= data["p90"] <= data["max"] <= data["sum"] < data["fit_seconds"]
    assert len(data["per_epoch_median"]) == 1
