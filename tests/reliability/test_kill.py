"""Fault tests: SIGKILL a training process mid-epoch, resume from its last checkpoint, finish.

Nothing is lost beyond the steps after that checkpoint and the result equals an
uninterrupted run. Checkpoint writes are atomic: a process SIGKILLed inside a write leaves
the previous checkpoint intact, and the partial file it leaves is removed by the next save.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sop_plugin.bench.checks import check_resume
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.fit import fit_method
from sop_plugin.runtime import AtomicCheckpointIO, CheckpointError, load_checkpoint
from tests.reliability.relutil import (
    LossRecorder,
    assert_states_close,
    checkpoint_at,
    overrides,
    state_of,
    tiny_config,
)
from tests.tinydata import DDP_EXACT

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


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
    train, test = load_data(bench_settings(cfg))
    rec = LossRecorder()
    fitted = fit_method(
        "sop", bench_settings(cfg), train, test, tmp_path, ckpt_path=paths["sop"], callbacks=[rec]
    )
    assert sorted(rec.losses) == list(range(saved, 12))  # only the steps after the checkpoint are redone
    for step, loss in rec.losses.items():
        assert loss == pytest.approx(losses[step], abs=1e-6), step
    assert_states_close(state_of(fitted.module), final, atol=1e-6)


def test_kill_ddp_run_then_resume_in_ddp_matches_one_process(tiny_data: Path, tmp_path: Path) -> None:
    """SIGKILL both ranks of a 2-process run mid-epoch, resume it with 2 processes: the final
    state equals a 1-process run on the same global batches (batch 16, rng_chunk 8)."""
    ddp = [
        "train.checkpoint_every_n_steps=2",
        "train.batch_size=8",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *DDP_EXACT,
    ]
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
        [
            sys.executable,
            "-m",
            "sop_plugin.bench.cli",
            *overrides(tmp_path, tiny_data, [*ddp, f"resume={tmp_path}"]),
        ],
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
    train, test = load_data(bench_settings(one))
    fitted = fit_method("sop", bench_settings(one), train, test, tmp_path / "one")
    assert_states_close(dict(final_ddp["state_dict"]), state_of(fitted.module), atol=1e-5)


def _read_line(proc: subprocess.Popen, timeout: float, stderr: Path) -> str:
    """The child's next stdout line; fails (with its stderr) if none comes within ``timeout`` s."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        pytest.fail(f"no line from the child within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"the child ended (rc {proc.returncode}) before its write: {stderr.read_text()[-3000:]}")
    return line


def test_kill_during_checkpoint_write_keeps_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL a process half-way through writing a checkpoint with AtomicCheckpointIO: the previous
    checkpoint still loads, the partial ``.tmp`` is never read, and the next save removes it."""
    ckpts, stderr = tmp_path / "checkpoints", tmp_path / "child.stderr"
    last = ckpts / "last.ckpt"
    code = "import sys; from tests.reliability.relutil import save_then_stall_mid_write as f; f(sys.argv[1])"
    with (
        stderr.open("w") as err,
        subprocess.Popen(
            [sys.executable, "-c", code, str(last)],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as proc,
    ):
        try:
            ready, written, total = _read_line(proc, 120, stderr).split()
            assert ready == "ready"  # the child is blocked inside the write of step 2, half of it on disk
            tmp = ckpts / f"last.ckpt.{proc.pid}.tmp"
            assert tmp.stat().st_size == int(written) < int(total)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()  # only if the test failed before its own kill
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", tmp.name]
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp)  # what the kill left really is half a checkpoint
    previous = AtomicCheckpointIO().load_checkpoint(last)
    assert previous["global_step"] == 1
    assert torch.equal(previous["state_dict"]["w"], checkpoint_at(1)["state_dict"]["w"])

    with caplog.at_level(logging.WARNING, logger="sop_plugin.runtime.checkpoint_io"):
        AtomicCheckpointIO().save_checkpoint(checkpoint_at(3), last)  # the next run's first save
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    assert f"removed {tmp}" in caplog.text and f"process {proc.pid}, killed" in caplog.text
    after = AtomicCheckpointIO().load_checkpoint(last)
    assert after["global_step"] == 3 and torch.equal(
        after["state_dict"]["w"], checkpoint_at(3)["state_dict"]["w"]
    )


def test_atomic_save_leaves_a_live_writers_tmp_alone(tmp_path: Path) -> None:
    """Only a dead writer's ``.tmp`` is stale: one named after a live process (another writer) stays."""
    last = tmp_path / "last.ckpt"
    live = tmp_path / f"last.ckpt.{os.getppid()}.tmp"
    live.write_bytes(b"PK another writer, mid-write")
    AtomicCheckpointIO().save_checkpoint(checkpoint_at(1), last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", live.name]
    assert load_checkpoint(last)["global_step"] == 1
