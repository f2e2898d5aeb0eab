"""Helpers shared by the solo-learn binding tests: CPU-sized overrides and config composition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

# CPU-sized settings on top of the shipped Fashion-MNIST configs (28x28, 5 classes here).
CPU = [
    "data.num_workers=0",
    "devices=1",
    "accelerator=cpu",
    "strategy=auto",
    "precision=32",
    "sync_batchnorm=False",
    "optimizer.batch_size=5",
    "auto_resume.enabled=False",
    "wandb.enabled=False",
    "++enable_progress_bar=False",
]
#: solo-learn's optimizer section of the tests' configs, without the batch size
ADAMW = {"name": "adamw", "lr": 1e-3, "classifier_lr": 1e-3, "weight_decay": 0.0}
SMALL_SOP = [
    "method_kwargs.head_hidden_dim=128",
    "method_kwargs.class_memory_size=1024",
    "method_kwargs.patch_memory_size=512",
    "method_kwargs.patch_num_anchors=32",
]


def data_overrides(folder: Path) -> list[str]:
    """``data.train_path`` / ``data.val_path`` of a tiny image folder."""
    return [f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}"]


def compose(folder: Path, name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A shipped hydra config with ``overrides``, unlocked (as solo-learn's scripts see it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(folder), version_base="1.2"):
        cfg = hydra_compose(config_name=name, overrides=list(overrides))
    OmegaConf.set_struct(cfg, False)
    return cfg


def compose_pretrain(overrides: Sequence[str]) -> DictConfig:
    """``scripts/pretrain/fashion-mnist/sop.yaml`` with ``overrides``."""
    return compose(SCRIPTS / "pretrain" / "fashion-mnist", "sop.yaml", overrides)
