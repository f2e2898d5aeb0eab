"""Bad input: every case gets a clear error naming the setting and the fix, before any training."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from PIL import Image

from sop_plugin.bench.checks import ConfigError, check_resume
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.runner import run
from sop_plugin.bench.settings import bench_settings
from sop_plugin.data.errors import DatasetCorruptError, DatasetNotFoundError
from sop_plugin.data.sources import folder
from sop_plugin.runtime import CheckpointError, UnsafeCheckpointWarning, load_checkpoint
from tests.reliability.bad_inputs import CONFIG_CASES
from tests.reliability.relutil import overrides, tiny_config


def _expect(cfg: dict, error: type[Exception] | str, match: str) -> str:
    """``run(cfg)`` fails with ``error`` whose message contains ``match``, and trains nothing."""
    with pytest.raises(Exception) as info:
        run(cfg)
    name = error if isinstance(error, str) else error.__name__
    assert type(info.value).__name__ == name, info.value
    assert match in str(info.value), str(info.value)
    out = Path(cfg["out"])
    assert not any((out / m).exists() for m in ("sop", "dino", "ibot")), "training started"
    return str(info.value)


@pytest.mark.parametrize(
    ("extra", "error", "match"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_input_config(extra: list[str], error: str, match: str, tiny_data: Path, tmp_path: Path) -> None:
    _expect(tiny_config(tmp_path / "out", tiny_data, extra), error, match)


def test_bad_input_unknown_backbone_or_key_is_rejected_by_hydra(tiny_data: Path, tmp_path: Path) -> None:
    """The bench has one backbone family (timm ViT, model.*): a backbone name is an unknown key."""
    with pytest.raises(ConfigCompositionException, match="model.backbone"):
        tiny_config(tmp_path, tiny_data, ["model.backbone=resnet18"])


def _image_folder(root: Path, n: int = 12, corrupt: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(d / f"{i}.png")
    for i in range(corrupt):
        (root / "class0" / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root


def _folder_cfg(tmp_path: Path, tiny_data: Path, path: Path, extra: list[str] | None = None) -> dict:
    return tiny_config(
        tmp_path / "out",
        tiny_data,
        ["data=image-folder", f"data.path={path}", "train.batch_size=4", "eval.knn_k=2", *(extra or [])],
    )


def test_bad_input_empty_image_folder(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _expect(
        _folder_cfg(tmp_path, tiny_data, tmp_path / "empty"), DatasetNotFoundError, "has no class sub-folders"
    )
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    _expect(_folder_cfg(tmp_path, tiny_data, tmp_path / "noimg"), DatasetNotFoundError, "has no images")


def test_bad_input_image_folder_is_a_file(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "file.png").write_bytes(b"x")
    _expect(
        _folder_cfg(tmp_path, tiny_data, tmp_path / "file.png"), DatasetNotFoundError, "is not a directory"
    )


def test_bad_input_unreadable_image_folder(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read permission (simulated: the tests may run as root, who reads anything)."""
    root = _image_folder(tmp_path / "locked")

    def denied(directory: Path) -> list[Path]:
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(folder, "class_dirs", denied)
    _expect(_folder_cfg(tmp_path, tiny_data, root), ConfigError, f"cannot read data.path={root}")


def test_bad_input_corrupt_images_skipped_with_count(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _image_folder(tmp_path / "some-bad", n=40, corrupt=1)
    cfg = _folder_cfg(tmp_path, tiny_data, root, ["+data.test_fraction=0.25"])
    with caplog.at_level(logging.WARNING):
        train, test = load_data(bench_settings(cfg))
    assert len(train) + len(test) == 40
    assert "skipped 1 unreadable of" in caplog.text


def test_bad_input_corrupt_images_past_threshold(tiny_data: Path, tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "many-bad", n=12, corrupt=4)
    _expect(_folder_cfg(tmp_path, tiny_data, root), DatasetCorruptError, "are unreadable")


# ---------------------------------------------------------------- checkpoints given to resume


def _ckpt(straight_out: Path) -> Path:
    return straight_out / "sop" / "checkpoints" / "last.ckpt"


class Payload:
    """An object outside the safe types; unpickling a real attack would run code here."""


@pytest.mark.slow
def test_bad_input_checkpoint_with_pickled_object_is_refused(
    straight: tuple, tiny_data: Path, tmp_path: Path
) -> None:
    ckpt = load_checkpoint(_ckpt(straight[2]))
    ckpt["callbacks"]["evil"] = Payload()
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    cfg = tiny_config(tmp_path / "out", tiny_data, [f"resume={path}"])
    msg = _expect(cfg, CheckpointError, "contains the pickled global")
    assert "Payload" in msg and "set trust_checkpoint=true" in msg
    trusted = tiny_config(tmp_path / "out", tiny_data, [f"resume={path}", "trust_checkpoint=true"])
    with pytest.warns(UnsafeCheckpointWarning, match="this can run code from the file"):
        assert check_resume(trusted) == {"sop": path}


@pytest.mark.slow
def test_bad_input_checkpoint_of_another_method(straight: tuple, tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "out", tiny_data, ["methods=[dino]", f"resume={_ckpt(straight[2])}"])
    _expect(cfg, ConfigError, "was trained with method 'sop', not 'dino'")


@pytest.mark.slow
def test_bad_input_checkpoint_file_for_several_methods(
    straight: tuple, tiny_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path / "out", tiny_data, ["methods=[sop,dino]", f"resume={_ckpt(straight[2])}"])
    _expect(cfg, ConfigError, "is one method's checkpoint but methods=['sop', 'dino']")


@pytest.mark.slow
def test_bad_input_checkpoint_with_other_shapes(straight: tuple, tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "out", tiny_data, ["model.embed_dim=64", f"resume={straight[2]}"])
    _expect(cfg, ConfigError, "model.embed_dim: checkpoint 32, config 64")


@pytest.mark.slow
def test_bad_input_checkpoint_weights_only(straight: tuple, tiny_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": load_checkpoint(_ckpt(straight[2]))["state_dict"]}, path)
    _expect(
        tiny_config(tmp_path / "out", tiny_data, [f"resume={path}"]),
        CheckpointError,
        "lacks ['optimizer_states'",
    )


def test_bad_input_checkpoint_empty_file(tiny_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    _expect(
        tiny_config(tmp_path / "out", tiny_data, [f"resume={path}"]), CheckpointError, "is empty (0 bytes)"
    )


@pytest.mark.slow
def test_bad_input_checkpoint_bit_flip(straight: tuple, tmp_path: Path) -> None:
    data = bytearray(_ckpt(straight[2]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.ckpt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_bad_input_checkpoint_omegaconf_hparams_load_safely(tmp_path: Path) -> None:
    """solo-learn / Lightning save the OmegaConf config as hyper-parameters: allowed, no warning."""
    from omegaconf import OmegaConf

    path = tmp_path / "solo-style.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "hyper_parameters": {
                "cfg": OmegaConf.create(
                    {"method": "sop", "optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}, "name": None}
                )
            },
        },
        path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = load_checkpoint(path)
    assert ckpt["hyper_parameters"]["cfg"].optimizer.betas[1] == 0.99


def test_bad_input_checkpoint_with_paths_loads_safely(tmp_path: Path) -> None:
    """Lightning < 2.2 pickles ModelCheckpoint's dirpath as a pathlib path: allowed, no warning."""
    path = tmp_path / "paths.ckpt"
    torch.save({"callbacks": {"ModelCheckpoint": {"dirpath": Path("/runs/x")}}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = load_checkpoint(path)
    assert ckpt["callbacks"]["ModelCheckpoint"]["dirpath"] == Path("/runs/x")


@pytest.mark.slow
def test_bad_input_cli_exit_code_and_message(tiny_data: Path, tmp_path: Path) -> None:
    args = overrides(tmp_path, tiny_data, ["methods=[sop,byol]"])
    proc = subprocess.run(
        [sys.executable, "-m", "sop_plugin.bench.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "sop-bench: error: methods=['sop', 'byol']: unknown ['byol']; choose from ['dino', 'ibot', 'sop']"
    )
