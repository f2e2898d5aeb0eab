"""``benchmarks/gpu_run.sh`` in its dry mode (``GPU_RUN_DRY=1``): every stage on the CPU at toy sizes.

The GPU check is prepared to run once, in one call of limited device time; this runs the same script,
stage for stage, on the CPU first, so that a broken stage shows here rather than on the device. Stage 4
(solo-learn) needs solo-learn: with ``.venv-solo`` (or solo-learn in this Python) it runs, otherwise the
script says in one line that it skipped it and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_run.sh"


@pytest.mark.slow
def test_gpu_run_dry_runs_every_stage(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "GPU_RUN_DRY": "1",
        "GPU_RUN_STAGES": "1,2,3,4",
        "OUT": str(out),
        "GPU_RUN_WORK": str(tmp_path / "work"),
        "FMNIST": str(tiny_data),
        "PYTHON": sys.executable,
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]

    files = {p.name for p in out.iterdir()}
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # what the device tool brings back
    expected = {"gpu_run.log", "summary.md", "perf.json", "perf.png", "retrieval.json"}
    assert expected | {"bench_results.json", "bench_report.md"} <= files, files

    perf = json.loads((out / "perf.json").read_text())
    for m in ("sop", "ibot", "dino"):
        assert perf["step"]["tiny"][m]["median_s"] > 0 and perf["step"]["tiny"][m]["peak_mb"] > 0
    assert "gpu_median_s" not in perf["step"]["tiny"]["sop"]  # CUDA events only on CUDA
    assert perf["breakdown"]["tiny"]["steps"] > 0

    rows = json.loads((out / "retrieval.json").read_text())["agreement"]
    assert {r["memory"] for r in rows} == {4096, 16384}
    for r in rows:
        if r["available"]:
            assert r["agreement_ties_aside"] == 1.0 and not r["excluded_returned"]
    assert any(r["backend"] == "torch" and r["available"] for r in rows)

    bench = json.loads((out / "bench_results.json").read_text())
    assert set(bench["methods"]) == {"sop", "dino", "ibot"}
    assert "raw_pixel_knn_top1" in bench
    for rec in bench["methods"].values():
        assert 0 <= rec["knn_top1"] <= 100 and 0 <= rec["linear_top1"] <= 100 and rec["collapse"]["history"]

    if "solo.json" in files:
        solo = json.loads((out / "solo.json").read_text())
        assert solo["ok"], solo
        assert solo["methods"]["sop"]["memories"]["class_memory"]["changed_rows"] > 0
    else:
        assert "stage 4 (solo-learn SOP+iBOT): skipped: solo-learn not importable" in log

    table = done.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("stage "))
    assert [line.split()[0] for line in table[header + 1 :] if line[:1].isdigit()] == ["1", "2", "3", "4"]
    stage_rows = {f"| {i}" for i in "1234"}
    rows_md = [line for line in (out / "summary.md").read_text().splitlines() if line[:3] in stage_rows]
    assert len(rows_md) == 4
