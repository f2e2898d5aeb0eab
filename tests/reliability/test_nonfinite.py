"""Non-finite losses: caught at the step, named (component, SOP set, inputs, temperatures,
memories, last good checkpoint); ``train.on_nonfinite=skip`` drops the step without a trace
in weights or memories; DDP ranks always agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.fit import fit_method
from sop_plugin.core import SOPConfig, SOPObjective
from sop_plugin.runtime import NonFiniteLossError, explain_nonfinite, load_checkpoint
from tests.reliability.relutil import LossRecorder, overrides, state_of, tiny_config

HERE = Path(__file__).parent


def inject_nan(monkeypatch: pytest.MonkeyPatch, steps: set[int], where: str = "cls") -> None:
    """Make the student's [CLS] (``cls``) or patch (``patch``) embeddings NaN at ``steps``."""
    forward = SOPObjective.forward

    def patched(
        self: SOPObjective,
        s_cls: Any,
        t_cls: Any,
        s_patch: Any = None,
        *args: Any,
        step: int = 0,
        **kwargs: Any,
    ) -> Any:
        if step in steps:
            if where == "cls":
                s_cls = s_cls * float("nan")
            else:
                s_patch = s_patch * float("nan")
        return forward(self, s_cls, t_cls, s_patch, *args, step=step, **kwargs)

    monkeypatch.setattr(SOPObjective, "forward", patched)


class StateAt(L.Callback):
    """The module's full state after each step."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.states[trainer.global_step] = state_of(module)


@pytest.mark.slow
def test_nonfinite_stop_names_component_and_last_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_nan(monkeypatch, {5})
    cfg = tiny_config(tmp_path, tiny_data)
    train, test = load_data(bench_settings(cfg))
    with pytest.raises(NonFiniteLossError) as info:
        fit_method("sop", bench_settings(cfg), train, test, tmp_path)
    msg = str(info.value)
    last = tmp_path / "sop" / "checkpoints" / "last.ckpt"
    for part in (
        "non-finite sop loss at step 5",
        "class loss (global SOP)",
        "class loss per SOP set [0: nan, 1: nan]",
        "student [CLS] embeddings",
        "temperatures: student 0.1, teacher",
        "memories after the step's enqueue: class memory 100x32, ptr 96: all rows finite",
        "likely cause: the student network diverged",
        f"last good checkpoint: {last} (step 4)",
        "train.on_nonfinite=skip",
    ):
        assert part in msg, f"{part!r} not in:\n{msg}"
    assert load_checkpoint(last)["global_step"] == 4  # the NaN step never reached a checkpoint


@pytest.mark.slow
def test_nonfinite_patch_loss_is_named(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_nan(monkeypatch, {1}, where="patch")
    cfg = tiny_config(tmp_path, tiny_data)
    train, test = load_data(bench_settings(cfg))
    with pytest.raises(NonFiniteLossError) as info:
        fit_method("sop", bench_settings(cfg), train, test, tmp_path)
    msg = str(info.value)
    assert "non-finite component(s): patch loss (SOP-MIM)" in msg and "class loss (global" not in msg
    assert "student patch embeddings" in msg and "no checkpoint written yet" in msg


def test_nonfinite_explain_names_the_sop_set() -> None:
    """Core level: a NaN support row in one SOP set is pinned to that set."""
    obj = SOPObjective(
        SOPConfig(
            dim=8,
            class_memory_size=64,
            patch_memory_size=64,
            class_num_sets=3,
            class_num_anchors=4,
            class_num_supports=2,
            patch_num_anchors=4,
        )
    )
    z = torch.nn.functional.normalize(torch.randn(3, 5, 8), dim=-1)
    out = obj(z, z[:2], step=0, update_memory=False)
    assert torch.isfinite(out.loss)
    record = obj.last_step
    assert record is not None
    record.class_student_probs[1, 0, 0, 0] = float("nan")
    text = explain_nonfinite(obj)
    assert (
        "non-finite in set(s) [1]" in text
        and "class memory 64x8, ptr 0: all rows finite unit vectors" in text
    )


@pytest.mark.slow
def test_nonfinite_skip_leaves_no_trace(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_nan(monkeypatch, {5})
    cfg = tiny_config(tmp_path, tiny_data, ["train.on_nonfinite=skip"])
    train, test = load_data(bench_settings(cfg))
    states, rec = StateAt(), LossRecorder()
    with pytest.warns(UserWarning, match="skipped step 5"):
        fitted = fit_method("sop", bench_settings(cfg), train, test, tmp_path, callbacks=[states, rec])
    assert fitted.trainer.global_step == 12 and fitted.module.skipped_steps == 1
    before, after = states.states[5], states.states[6]  # after step 4 and after the skipped step 5
    for name, value in before.items():  # weights, teacher, optimiser-free buffers, both memories + pointers
        assert torch.equal(value, after[name]), name
    assert all(torch.isfinite(torch.tensor(v)) for s, v in rec.losses.items() if s != 5)
    ckpt = load_checkpoint(tmp_path / "sop" / "checkpoints" / "last.ckpt")
    assert ckpt["sop_bench"]["skipped_steps"] == 1


@pytest.mark.slow
def test_nonfinite_skip_gives_up_after_consecutive_skips(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_nan(monkeypatch, set(range(3, 12)))
    cfg = tiny_config(tmp_path, tiny_data, ["train.on_nonfinite=skip", "train.max_consecutive_skips=2"])
    train, test = load_data(bench_settings(cfg))
    with (
        pytest.warns(UserWarning),
        pytest.raises(NonFiniteLossError, match="2 consecutive steps were already skipped"),
    ):
        fit_method("sop", bench_settings(cfg), train, test, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "code"), [("stop", 3), ("skip", 0)])
def test_nonfinite_ddp_ranks_agree(policy: str, code: int, tiny_data: Path, tmp_path: Path) -> None:
    """NaN on rank 1 only: with stop both ranks stop (exit 3, no hang); with skip both skip."""
    args = overrides(
        tmp_path,
        tiny_data,
        [
            "train.batch_size=8",
            "train.epochs=1",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            f"train.on_nonfinite={policy}",
            "eval.linear_epochs=1",
        ],
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAN_STEP": "3", "NAN_RANK": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "nan_bench.py"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    last = tmp_path / "sop" / "checkpoints" / "last.ckpt"
    if policy == "stop":
        assert (
            "sop-bench: stopped: non-finite sop loss at step 3: non-finite component(s): class loss"
            in proc.stderr
        )
        assert "non-finite sop loss at step 3: on another DDP rank (this rank 0" in proc.stderr
        assert not last.exists()  # stopped before the first checkpoint (every 4 steps)
    else:
        ckpt = load_checkpoint(last)
        assert ckpt["global_step"] == 6 and ckpt["sop_bench"]["skipped_steps"] == 1
