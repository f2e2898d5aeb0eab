"""Helpers for benchmark tests: a tiny Fashion-MNIST-shaped IDX set and a small config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sop_plugin.data import write_idx

TINY_OVERRIDES = [
    "train.epochs=1", "train.max_steps=3", "train.batch_size=16",
    "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
    "head.hidden_dim=64", "head.bottleneck_dim=32", "dino.head.out_dim=64", "ibot.head.out_dim=64",
    "sop.sop.class_memory_size=128", "sop.sop.patch_memory_size=128", "sop.sop.class_num_anchors=8",
    "sop.sop.class_num_supports=2", "sop.sop.class_num_sets=2", "sop.sop.patch_num_anchors=16",
    "temps.warmup_steps=2", "eval.linear_epochs=2", "eval.epoch_train_subset=64", "eval.epoch_test_subset=32",
    "eval.retrieval_max_queries=32", "eval.sop_grid_rows=3", "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
]


def make_idx_dataset(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """Class-dependent blobs in 28x28 IDX files laid out as the Debian Fashion-MNIST package."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            images[i, 2 + r * 8 : 10 + r * 8, 2 + col * 6 : 8 + col * 6] = 220
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def bench_config(out: Path, data: Path, extra: list[str] | None = None) -> dict[str, Any]:
    with initialize_config_module("sop_plugin.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*TINY_OVERRIDES, f"out={out}", f"data.path={data}", *(extra or [])])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]
