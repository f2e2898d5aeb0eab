"""Through the shipped scripts: ibot.sh (fast_dev_run), the linear launcher on an iBOT checkpoint,
scripts/compare/fashion-mnist.sh on three tiny runs, and the pretraining checks of the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch

from tests.solo.soloutil import CPU, SCRIPTS, compose, data_overrides

SMALL_IBOT = ["method_kwargs.num_prototypes=256", "method_kwargs.head_hidden_dim=128"]


def _bash(script: Path, args: list[str], cwd: Path, env: dict[str, str] | None = None):
    bindir = str(Path(sys.executable).parent)
    if not (Path(bindir) / "sop-solo-pretrain").exists():
        pytest.skip("console scripts not installed in this environment (pip install -e .)")
    full = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore", **(env or {})}
    result = subprocess.run(
        ["bash", str(script), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.mark.slow
def test_ibot_sh_fast_dev_run_then_linear_sh_on_its_checkpoint(tiny_image_folder: Path, tmp_path: Path):
    ckpt_dir = tmp_path / "trained_models"
    common = [*data_overrides(tiny_image_folder), *CPU, f"checkpoint.dir={ckpt_dir}", "++fast_dev_run=True"]
    _bash(SCRIPTS / "pretrain" / "fashion-mnist" / "ibot.sh", [*common, *SMALL_IBOT], tmp_path)
    ckpts = sorted((ckpt_dir / "ibot").rglob("*.ckpt"))
    assert len(ckpts) == 1, ckpts
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    keys = {"mask_token", "method.student_head.last_layer.weight_v", "method.patch_loss.center.center"}
    keys |= {"method.cls_loss.center"}
    assert keys <= set(state), sorted(set(state))
    _bash(SCRIPTS / "linear" / "fashion-mnist" / "ibot.sh", [str(ckpts[0]), *common], tmp_path)
    assert len(list((ckpt_dir / "linear").rglob("*.ckpt"))) == 1


@pytest.mark.slow
def test_compare_script_runs_three_methods_and_writes_the_table(tiny_image_folder: Path, tmp_path: Path):
    out = tmp_path / "compare"
    args = [
        *data_overrides(tiny_image_folder),
        *CPU,
        "max_epochs=1",
        "++limit_train_batches=2",
        "clean_knn.enabled=True",
    ]
    result = _bash(SCRIPTS / "compare" / "fashion-mnist.sh", args, tmp_path, {"COMPARE_OUT": str(out)})
    table = (out / "comparison.md").read_text()
    for method in ("sop", "dino", "ibot"):
        assert f"| {method} |" in table, table
        assert len(list((out / method).rglob("metrics.csv"))) >= 1
    assert "clean kNN best" in table and "n/a | n/a | 1 |" not in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch 0: val_knn_acc1" in result.stdout  # the accuracies reach the console


def test_launcher_refuses_a_dino_warm_up_longer_than_the_run(tiny_image_folder, tmp_path, monkeypatch):
    from sop_plugin.solo.launch import run_pretrain

    monkeypatch.chdir(tmp_path)
    overrides = [*data_overrides(tiny_image_folder), *CPU, "max_epochs=2"]
    cfg = compose(SCRIPTS / "pretrain" / "fashion-mnist", "dino.yaml", overrides)
    expected = r"warmup_teacher_temperature_epochs=10 > max_epochs=2.*Set method_kwargs"
    with pytest.raises(ValueError, match=expected):
        run_pretrain(cfg)


def test_launcher_refuses_limit_val_batches_that_starve_online_knn(
    tiny_image_folder: Path, tmp_path: Path, monkeypatch
):
    from sop_plugin.solo.launch import run_pretrain

    monkeypatch.chdir(tmp_path)
    overrides = [*data_overrides(tiny_image_folder), *CPU, "optimizer.batch_size=2", "++limit_val_batches=1"]
    cfg = compose(SCRIPTS / "pretrain" / "fashion-mnist", "sop.yaml", overrides)
    with pytest.raises(ValueError, match=r"hold 2 of its 5 classes"):
        run_pretrain(cfg)


@pytest.mark.slow
def test_a_resumed_finished_run_says_it_trained_nothing(tiny_image_folder, tmp_path, monkeypatch, capfd):
    from sop_plugin.solo.launch import run_pretrain

    monkeypatch.chdir(tmp_path)
    overrides = [*data_overrides(tiny_image_folder), *CPU, *SMALL_IBOT, "max_epochs=1"]
    overrides += [
        "++limit_train_batches=1",
        "auto_resume.enabled=True",
        "knn_eval.enabled=False",
        f"checkpoint.dir={tmp_path / 'ckpt'}",
    ]
    first = run_pretrain(compose(SCRIPTS / "pretrain" / "fashion-mnist", "ibot.yaml", overrides))
    assert first.global_step == 1 and "trained nothing" not in capfd.readouterr().err
    again = run_pretrain(compose(SCRIPTS / "pretrain" / "fashion-mnist", "ibot.yaml", overrides))
    assert again.global_step == 1  # solo-learn's auto-resume picked up the finished run
    assert "WARNING: this run trained nothing" in capfd.readouterr().err
