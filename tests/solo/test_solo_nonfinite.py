"""solo-learn host: a non-finite SOP loss stops training with a diagnosis, or the step is skipped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch

from sop_plugin.core import SOPObjective
from sop_plugin.runtime import NonFiniteLossError
from tests.solo.soloutil import CPU, SMALL_SOP, compose_pretrain, data_overrides

BAD_STEP = 1
STEPS = 4  # 20 training images, batch 5


def _poison_student_at(monkeypatch: pytest.MonkeyPatch, bad_step: int) -> None:
    """The student's [CLS] embeddings become NaN at ``bad_step`` (a diverged student)."""
    forward = SOPObjective.forward

    def poisoned(self, student_cls, *args, step: int = 0, **kwargs):
        if step == bad_step:
            student_cls = student_cls * float("nan")
        return forward(self, student_cls, *args, step=step, **kwargs)

    monkeypatch.setattr(SOPObjective, "forward", poisoned)


def _run(folder: Path, tmp_path: Path, extra: list[str]):
    from sop_plugin.solo.launch import run_pretrain

    return run_pretrain(
        compose_pretrain(
            [
                *data_overrides(folder),
                *CPU,
                *SMALL_SOP,
                "max_epochs=1",
                "knn_eval.enabled=False",
                f"checkpoint.dir={tmp_path / 'ckpt'}",
                "++limit_val_batches=0",
                "++num_sanity_val_steps=0",
                "++logger=False",
                *extra,
            ]
        )
    )


@pytest.mark.slow
def test_solo_nonfinite_stop_names_the_component(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _poison_student_at(monkeypatch, BAD_STEP)
    with pytest.raises(NonFiniteLossError) as err:
        _run(tiny_image_folder, tmp_path, [])
    message = str(err.value)
    assert f"non-finite SOP loss at step {BAD_STEP}" in message
    assert "class loss" in message and "student" in message  # runtime.explain_nonfinite()
    assert "no checkpoint written yet" in message
    assert "method_kwargs.on_nonfinite=skip" in message


@pytest.mark.slow
def test_solo_nonfinite_skip_drops_the_step(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _poison_student_at(monkeypatch, BAD_STEP)
    trainer = _run(tiny_image_folder, tmp_path, ["++method_kwargs.on_nonfinite=skip"])
    model = trainer.lightning_module
    assert trainer.global_step == STEPS and model.skipped_steps == 1
    # the skipped step wrote nothing into the memories: 3 steps of 5 images each
    assert int(model.method.objective.class_memory.ptr) == (STEPS - 1) * 5
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        if p.is_floating_point():
            assert torch.isfinite(p).all(), name
    assert math.isfinite(float(trainer.callback_metrics["train_sop_loss"]))


def test_solo_nonfinite_bad_policy_is_a_config_error() -> None:
    from sop_plugin.solo.sop_method import SOP

    cfg = compose_pretrain(["++method_kwargs.on_nonfinite=ignore"])
    expected = r"method_kwargs.on_nonfinite='ignore'; choose one of \['stop', 'skip'\]"
    with pytest.raises(ValueError, match=expected):
        SOP.add_and_assert_specific_cfg(cfg)
