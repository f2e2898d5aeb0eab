"""Fault tests: SIGKILL a training process mid-epoch, resume from its last checkpoint, finish.

Nothing is lost beyond the steps after that checkpoint and the result equals an
uninterrupted run. Checkpoint writes are atomic: a crash inside a write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.io import torch_io

from sop_plugin.bench.runner import check_resume, fit_method, load_data
from sop_plugin.runtime import AtomicCheckpointIO, CheckpointError, load_checkpoint
from tests.reliability.relutil import LossRecorder, assert_states_close, overrides, state_of, tiny_config
from tests.tinydata import DDP_EXACT

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


def _wait_for_checkpoint(path: Path, min_step: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        if path.is_file():
            try:
                if load_checkpoint(path)["global_step"] >= min_step:
                    return
            except CheckpointError:
                pytest.fail(f"{path} was readable only in part: checkpoint writes are not atomic")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint at step >= {min_step} within {timeout} s")


def test_kill_mid_epoch_then_resume_matches_uninterrupted(
    straight: tuple[dict[int, float], dict, Path], tiny_data: Path, tmp_path: Path
) -> None:
    losses, final, _ = straight
    args = overrides(tmp_path, tiny_data, ["train.checkpoint_every_n_steps=2"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "slow_bench.py"), *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "sop" / "checkpoints" / "last.ckpt"
    try:
        _wait_for_checkpoint(last, 8, proc)  # step 8: two steps into the second epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(last)["global_step"]
    assert 8 <= saved < 12 and saved % 2 == 0

    cfg = tiny_config(tmp_path, tiny_data, ["train.checkpoint_every_n_steps=2", f"resume={tmp_path}"])
    paths = check_resume(cfg)
    train, test = load_data(cfg)
    rec = LossRecorder()
    fitted = fit_method("sop", cfg, train, test, tmp_path, ckpt_path=paths["sop"], callbacks=[rec])
    assert sorted(rec.losses) == list(range(saved, 12))  # only the steps after the checkpoint are redone
    for step, loss in rec.losses.items():
        assert loss == pytest.approx(losses[step], abs=1e-6), step
    assert_states_close(state_of(fitted.module), final, atol=1e-6)


def test_kill_ddp_run_then_resume_in_ddp_matches_one_process(tiny_data: Path, tmp_path: Path) -> None:
    """SIGKILL both ranks of a 2-process run mid-epoch, resume it with 2 processes: the final
    state equals a 1-process run on the same global batches (batch 16, rng_chunk 8)."""
    ddp = ["train.checkpoint_every_n_steps=2", "train.batch_size=8", "trainer.devices=2", "trainer.strategy=ddp",
           *DDP_EXACT]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "slow_bench.py"), *overrides(tmp_path, tiny_data, ddp)],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "sop" / "checkpoints" / "last.ckpt"
    try:
        _wait_for_checkpoint(last, 4, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank 1 it launched
        proc.wait()
    saved = load_checkpoint(last)["global_step"]
    assert 4 <= saved < 12

    resumed = subprocess.run(
        [sys.executable, "-m", "sop_plugin.bench.cli", *overrides(tmp_path, tiny_data, [*ddp, f"resume={tmp_path}"])],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final_ddp = load_checkpoint(last)
    assert final_ddp["global_step"] == 12

    one = tiny_config(tmp_path / "one", tiny_data, ["train.rng_chunk=8", *DDP_EXACT])
    train, test = load_data(one)
    fitted = fit_method("sop", one, train, test, tmp_path / "one")
    assert_states_close(dict(final_ddp["state_dict"]), state_of(fitted.module), atol=1e-5)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)

    def dies_halfway(checkpoint: dict, filepath: object) -> None:  # the process dies inside the write
        Path(str(filepath)).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch_io, "_atomic_save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
