"""solo-learn host under Lightning DDP (2 CPU processes, gloo): memories identical on both ranks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch

#: the repository root, where ``tests.solo.solo_ddp_worker`` is importable from
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_solo_ddp_two_processes_share_memories(tiny_image_folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    result = subprocess.run(
        [sys.executable, "-m", "tests.solo.solo_ddp_worker", str(tiny_image_folder), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    steps = 20 // (2 * 2)  # 20 images, 2 per rank, 2 ranks
    for state in ranks:
        assert state["world"] == 2 and state["step"] == steps and math.isfinite(state["loss"])
        # every step enqueues the *global* batch (4 images) on every rank
        assert state["class_ptr"] == steps * 4
    assert torch.equal(ranks[0]["class_bank"], ranks[1]["class_bank"])
    assert torch.equal(ranks[0]["patch_bank"], ranks[1]["patch_bank"])
    assert ranks[0]["patch_ptr"] == ranks[1]["patch_ptr"] == steps * 4
