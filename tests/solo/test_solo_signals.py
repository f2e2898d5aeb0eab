"""SIGTERM to a real ``sop-solo-pretrain`` process mid-epoch: checkpoint of that step, exit 143, resume.

The launcher runs in a subprocess slowed to ~0.2 s per step (``slow_solo.py``); the
signal lands in the second epoch. The resumed run (started with the command the
interrupted one printed) continues from that step and ends at the uninterrupted step count.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

from sop_plugin.runtime import load_checkpoint
from tests.solo.soloutil import CPU, SCRIPTS, SMALL_SOP, data_overrides

HERE = Path(__file__).parent
STEPS_PER_EPOCH = 4  # 20 training images, batch 5, drop_last
EPOCHS = 3


def _env(progress: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    if progress is not None:
        env["SOP_TEST_PROGRESS"] = str(progress)
    return env


def _args(folder: Path, ckpt_dir: Path) -> list[str]:
    return [
        "--config-path",
        str(SCRIPTS / "pretrain" / "fashion-mnist"),
        "--config-name",
        "sop.yaml",
        *data_overrides(folder),
        *CPU,
        *SMALL_SOP,
        f"max_epochs={EPOCHS}",
        "knn_eval.enabled=False",
        f"checkpoint.dir={ckpt_dir}",
        "++limit_val_batches=0",
        "++num_sanity_val_steps=0",
        "++logger=False",
    ]


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_the_step_exits_143_and_resumes(tiny_image_folder, tmp_path):
    ckpt_dir, progress = tmp_path / "trained_models", tmp_path / "progress"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "slow_solo.py"), *_args(tiny_image_folder, ckpt_dir)],
        cwd=tmp_path,
        env=_env(progress),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    seen = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ended (status {proc.returncode}) before the signal:\n{proc.stderr.read()[-3000:]}")
        text = progress.read_text() if progress.is_file() else ""
        if text.isdigit() and int(text) >= STEPS_PER_EPOCH + 1:  # one step into the second epoch
            seen = int(text)
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("training never reached step 5")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM == 143, stderr[-3000:]
    assert "Traceback" not in stderr

    interrupted = "sop-solo-pretrain: interrupted by SIGTERM"
    lines = [line for line in stderr.splitlines() if line.startswith(interrupted)]
    assert len(lines) == 1, stderr[-3000:]
    message = lines[0]
    ckpt = Path(message.split("; checkpoint ", 1)[1].split("; resume with: ", 1)[0])
    saved = load_checkpoint(ckpt)
    assert seen <= saved["global_step"] <= seen + 1
    assert f"at step {saved['global_step']} " in message
    assert ckpt.name.endswith(f"-ep=1-step={saved['global_step']}.ckpt")
    # the memories inside, the RNG states in their callback's state
    assert "method.objective.class_memory.bank" in saved["state_dict"] and "rng_states" not in saved
    assert any("RNGStateCheckpoint" in key for key in saved["callbacks"])  # the RNG states travel with it
    # checkpoint.keep_prev=False: it replaced the epoch-0 checkpoint, so auto-resume finds it alone
    assert sorted(p.name for p in ckpt.parent.glob("*.ckpt")) == [ckpt.name]
    assert not list(ckpt.parent.glob("*.tmp"))

    command = shlex.split(message.split("; resume with: ", 1)[1])
    assert command[0] == "sop-solo-pretrain" and command[-1] == f"++resume_from_checkpoint='{ckpt}'"
    resumed = subprocess.run(
        [sys.executable, "-m", "sop_plugin.solo.launch", *command[1:]],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finals = sorted(ckpt_dir.rglob(f"*-ep={EPOCHS - 1}.ckpt"))
    assert len(finals) == 1, sorted(ckpt_dir.rglob("*.ckpt"))
    # continued from the interrupted step: the uninterrupted count, not one step more (Lightning 2.1.2
    # would redo the interrupted batch's count without sop_plugin.runtime.interrupt.count_current_batch)
    assert load_checkpoint(finals[0])["global_step"] == EPOCHS * STEPS_PER_EPOCH
