"""sop-solo-pretrain / sop-solo-linear end to end on a tiny image folder (CPU)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch
from omegaconf import OmegaConf

from sop_plugin.solo.attach import parse_with_devices
from sop_plugin.solo.launch import absolute_config_path
from tests.solo.soloutil import CPU, SCRIPTS, SMALL_SOP, compose_pretrain, data_overrides


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"console script {name} not installed (pip install -e . in this environment)")
    return found


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def test_config_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["prog", "--config-path", "scripts/x", "--config-name", "sop.yaml", "-cp=rel", "a=b"]
    out = absolute_config_path(argv)
    assert out[2] == str(tmp_path / "scripts/x") and out[5] == f"-cp={tmp_path / 'rel'}"
    assert out[3:5] == ["--config-name", "sop.yaml"] and out[6] == "a=b"


def test_parse_with_devices_accepts_an_int(tiny_image_folder):
    from solo.args.linear import parse_cfg

    cfg = OmegaConf.load(SCRIPTS / "linear" / "fashion-mnist" / "sop.yaml")
    cfg.pop("defaults")
    overrides = ["devices=2", "pretrained_feature_extractor=x.ckpt"]
    cfg.merge_with_dotlist(data_overrides(tiny_image_folder) + overrides)
    cfg = parse_with_devices(parse_cfg, cfg)
    assert cfg.devices == 2
    assert cfg.data.num_classes == 5
    assert math.isclose(cfg.optimizer.lr, 0.1 * 256 * 2 / 256)  # scaled by batch x devices


@pytest.mark.slow
def test_cli_fast_dev_run_pretrain_then_linear(tiny_image_folder, tmp_path):
    ckpt_dir = tmp_path / "trained_models"
    pretrained = _run(
        [
            _script("sop-solo-pretrain"),
            "--config-path",
            str(SCRIPTS / "pretrain" / "fashion-mnist"),
            "--config-name",
            "sop.yaml",
            *data_overrides(tiny_image_folder),
            *CPU,
            *SMALL_SOP,
            "knn_eval.enabled=True",
            f"checkpoint.dir={ckpt_dir}",
            "++fast_dev_run=True",
        ],
        cwd=tmp_path,
    )
    ckpts = sorted((ckpt_dir / "sop").rglob("*.ckpt"))
    assert len(ckpts) == 1, ckpts
    log = pretrained.stderr
    assert "sop-solo-pretrain: running " in log and "with sop-plugin attached" in log
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    assert "method.objective.class_memory.bank" in state and "backbone.cls_token" in state

    _run(
        [
            _script("sop-solo-linear"),
            "--config-path",
            str(SCRIPTS / "linear" / "fashion-mnist"),
            "--config-name",
            "sop.yaml",
            f"pretrained_feature_extractor='{ckpts[0]}'",  # quoted: the name has '='
            *data_overrides(tiny_image_folder),
            *CPU,
            f"checkpoint.dir={ckpt_dir}",
            "++fast_dev_run=True",
        ],
        cwd=tmp_path,
    )
    assert len(list((ckpt_dir / "linear").rglob("*.ckpt"))) == 1


@pytest.mark.slow
def test_pretrain_logs_knn_and_sop_losses_and_resumes(tiny_image_folder, tmp_path, monkeypatch):
    from sop_plugin.solo.launch import run_pretrain

    monkeypatch.chdir(tmp_path)
    ckpt_dir = tmp_path / "trained_models"
    common = [
        *data_overrides(tiny_image_folder),
        *CPU,
        *SMALL_SOP,
        "knn_eval.enabled=True",
        f"checkpoint.dir={ckpt_dir}",
        "++limit_train_batches=1",
        "++limit_val_batches=1",
        "++num_sanity_val_steps=0",
        "++logger=False",
    ]
    trainer = run_pretrain(compose_pretrain([*common, "max_epochs=1"]))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("val_knn_acc1", "val_acc1", "train_sop_loss", "train_sop_cls_loss", "train_sop_mim_loss"):
        assert key in metrics and math.isfinite(metrics[key]), (key, metrics)
    # per step, under the method's name (sop.yaml: a constant 0.04)
    assert metrics["sop_teacher_temp"] == pytest.approx(0.04)
    assert "train_sop_koleo_loss" not in metrics  # koleo_weight 0 in sop.yaml
    assert 0.0 <= metrics["val_knn_acc1"] <= 100.0
    first = sorted((ckpt_dir / "sop").rglob("*.ckpt"))
    assert len(first) == 1
    before = torch.load(first[0], map_location="cpu", weights_only=True)

    resume = f"++resume_from_checkpoint='{first[0]}'"
    resumed = run_pretrain(compose_pretrain([*common, "max_epochs=2", resume]))
    assert resumed.global_step == before["global_step"] + 1
    after = resumed.lightning_module.method.objective
    # the memories were restored from the checkpoint, then advanced by one step of 5 images
    saved = before["state_dict"]
    assert int(after.class_memory.ptr) == (int(saved["method.objective.class_memory.ptr"]) + 5) % 1024
    assert int(after.patch_memory.ptr) == (int(saved["method.objective.patch_memory.ptr"]) + 5) % 512
