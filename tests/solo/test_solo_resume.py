"""solo-learn host: auto-resume after an interruption equals the uninterrupted run.

A run is interrupted right after solo-learn's Checkpointer has saved its first epoch
(an exception, as a pre-empted job would die), then the *same* command is started
again with ``auto_resume.enabled=True``: solo-learn's AutoResumer finds the checkpoint
and the run finishes. Weights, both memories and the last step's losses must equal
those of a run that was never interrupted. This needs the global RNG states in the
checkpoint (solo-learn shuffles and augments with the global generators), which
:class:`sop_plugin.runtime.RNGStateCheckpoint` adds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import lightning as L
import torch

from sop_plugin.runtime import load_checkpoint
from sop_plugin.solo import attach, launch
from tests.solo.soloutil import CPU, SMALL_SOP, compose_pretrain, data_overrides

STEPS_PER_EPOCH = 4  # 20 training images, batch 5, drop_last
MAKE_CALLBACKS = attach.plugin_callbacks  # the launcher's own, before any test patches it


class Preempted(RuntimeError):
    """Raised to interrupt a run after its first checkpoint."""


class PreemptAfterFirstEpoch(L.Callback):
    """Stands for a job killed right after solo-learn's Checkpointer saved epoch 0."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        raise Preempted("interrupted after the first epoch's checkpoint")


def _run(folder: Path, ckpt_dir: Path, extra: list[str], monkeypatch: pytest.MonkeyPatch, preempt=False):
    def plugin_callbacks(*args, **kwargs):
        return MAKE_CALLBACKS(*args, **kwargs) + ([PreemptAfterFirstEpoch()] if preempt else [])

    monkeypatch.setattr(attach, "plugin_callbacks", plugin_callbacks)
    overrides = [
        *data_overrides(folder),
        *CPU,
        *SMALL_SOP,
        "max_epochs=2",
        "knn_eval.enabled=False",
        f"checkpoint.dir={ckpt_dir}",
        "++checkpoint.keep_prev=True",
        "++limit_val_batches=0",
        "++num_sanity_val_steps=0",
        "++logger=False",
        *extra,
    ]
    cfg = compose_pretrain(overrides)
    if not preempt:
        return launch.run_pretrain(cfg)
    with pytest.raises(Preempted):
        launch.run_pretrain(cfg)
    return None


def _final_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    last = [p for p in (ckpt_dir / "sop").rglob("*-ep=1.ckpt")]
    assert len(last) == 1, sorted((ckpt_dir / "sop").rglob("*"))
    return load_checkpoint(last[0])["state_dict"]


@pytest.mark.slow
def test_solo_auto_resume_matches_uninterrupted_run(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    straight_dir, cut_dir = tmp_path / "straight", tmp_path / "cut"

    straight = _run(tiny_image_folder, straight_dir, [], monkeypatch)
    assert straight.global_step == 2 * STEPS_PER_EPOCH

    _run(tiny_image_folder, cut_dir, ["auto_resume.enabled=True"], monkeypatch, preempt=True)
    assert len(list((cut_dir / "sop").rglob("*.ckpt"))) == 1  # epoch 0 only

    resumed = _run(tiny_image_folder, cut_dir, ["auto_resume.enabled=True"], monkeypatch)
    assert resumed.global_step == 2 * STEPS_PER_EPOCH  # resumed at step 4, not restarted from 0

    for key in ("train_sop_cls_loss", "train_sop_mim_loss"):
        got, want = resumed.callback_metrics[key], straight.callback_metrics[key]
        assert torch.allclose(got, want, rtol=0, atol=0), (key, float(got - want))
    expected, got = _final_state(straight_dir), _final_state(cut_dir)
    assert expected.keys() == got.keys()
    assert any(k.startswith("method.objective.class_memory") for k in expected)
    for key, value in expected.items():
        assert torch.allclose(got[key].float(), value.float(), rtol=0, atol=0), (
            key,
            float((got[key].float() - value.float()).abs().max()),
        )


@pytest.mark.slow
def test_solo_resume_without_rng_state_would_differ(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The equality above is not trivial: resuming with a different RNG state changes the weights."""
    from sop_plugin.runtime import rng_state

    monkeypatch.chdir(tmp_path)
    straight_dir, cut_dir = tmp_path / "straight", tmp_path / "cut"
    _run(tiny_image_folder, straight_dir, [], monkeypatch)
    _run(tiny_image_folder, cut_dir, ["auto_resume.enabled=True"], monkeypatch, preempt=True)
    monkeypatch.setattr(rng_state.RNGStateCheckpoint, "load_state_dict", lambda self, state: None)
    _run(tiny_image_folder, cut_dir, ["auto_resume.enabled=True"], monkeypatch)
    expected, got = _final_state(straight_dir), _final_state(cut_dir)
    assert not torch.equal(got["backbone.cls_token"], expected["backbone.cls_token"]) or not torch.equal(
        got["method.objective.class_memory.bank"], expected["method.objective.class_memory.bank"]
    )
