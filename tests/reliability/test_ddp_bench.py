"""``sop-bench trainer.devices=2 trainer.strategy=ddp trainer.accelerator=cpu`` end to end.

Lightning re-launches the hydra script for rank 1; both ranks train every method, rank 0
evaluates. The 2-process run (batch 8 per process) must equal a 1-process run with the
global batch (16) and ``train.rng_chunk=8``: same images per step (GlobalBatchSampler),
same crops and masks per image (per-chunk generators), same memories, same gradients.
Equality is checked for ``sop`` and ``dino``; ``ibot`` must run (its patch centre is a
mean of per-rank means in lightly, see docs/reliability.md).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.fit import fit_method
from sop_plugin.runtime import load_checkpoint
from tests.reliability.relutil import LossRecorder, assert_states_close, overrides, state_of, tiny_config
from tests.tinydata import DDP_EXACT

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow

# (optim.eps=1e-4 comes with the tiny config: see tinydata.TINY_RUN); without the per-rank terms
# (drop path, KoLeo: tinydata.DDP_EXACT)
COMMON = ["train.epochs=1", *DDP_EXACT]


def _step_losses(metrics: Path) -> dict[int, float]:
    with metrics.open() as f:
        return {
            int(r["step"]): float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")
        }


@pytest.fixture(scope="module")
def ddp_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI on 2 processes, without ``out=``: both ranks must agree on rank 0's timestamped directory."""
    cwd = tmp_path_factory.mktemp("ddp")
    args = [
        a
        for a in overrides(
            cwd,
            tiny_data,
            [
                *COMMON,
                "methods=[sop,dino,ibot]",
                "train.batch_size=8",
                "trainer.devices=2",
                "trainer.strategy=ddp",
                "trainer.accelerator=cpu",
            ],
        )
        if not a.startswith("out=")
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sop_plugin.bench.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((cwd / "runs" / "bench").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote into rank 0's directory, not a timestamped one of its own
    return runs[0]


def test_ddp_bench_cli_runs_and_rank0_reports(ddp_run: Path) -> None:
    results = json.loads((ddp_run / "results.json").read_text())
    assert set(results["methods"]) == {"sop", "dino", "ibot"}
    for method in ("sop", "dino", "ibot"):
        assert (ddp_run / method / "checkpoints" / "last.ckpt").is_file()
        assert len(_step_losses(ddp_run / method / "metrics.csv")) == 6  # 96 images / (2 x 8) per step


@pytest.mark.parametrize("method", ["sop", "dino", "ibot"])
def test_ddp_bench_matches_one_process(method: str, ddp_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path, tiny_data, [*COMMON, f"methods=[{method}]", "train.batch_size=16", "train.rng_chunk=8"]
    )
    train, test = load_data(bench_settings(cfg))
    rec = LossRecorder()
    fitted = fit_method(method, bench_settings(cfg), train, test, tmp_path, callbacks=[rec])
    ddp_losses = _step_losses(ddp_run / method / "metrics.csv")
    assert sorted(ddp_losses) == sorted(rec.losses) == list(range(6))
    for step, loss in rec.losses.items():
        assert ddp_losses[step] == pytest.approx(loss, abs=1e-5), step
    ddp_state = load_checkpoint(ddp_run / method / "checkpoints" / "last.ckpt")["state_dict"]
    assert_states_close(dict(ddp_state), state_of(fitted.module), atol=1e-5)
