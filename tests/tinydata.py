"""The one tiny data set and the tiny ``sop-bench`` configurations the test suite trains on.

Imported as ``tests.tinydata``: ``tests`` is a package, so pytest (its default ``prepend`` import mode)
imports the test modules from the repository root, as ``python -m`` run there does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sop_plugin.data import write_idx

#: a bench run of every method in 3 steps on the default 28 px model, shrunk
TINY_BENCH = [
    "train.epochs=1",
    "train.max_steps=3",
    "train.batch_size=16",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "head.head_hidden_dim=64",
    "head.dim=32",
    "dino.num_prototypes=64",
    "ibot.num_prototypes=64",
    "sop.class_memory_size=128",
    "sop.patch_memory_size=128",
    "sop.class_num_anchors=8",
    "sop.class_num_supports=2",
    "sop.class_num_sets=2",
    "sop.patch_num_anchors=16",
    "temps.warmup_teacher_temp_steps=2",
    "eval.linear_epochs=2",
    "eval.epoch_train_subset=64",
    "eval.epoch_test_subset=32",
    "eval.retrieval_max_queries=32",
    "eval.sop_grid_rows=3",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_progress_bar=false",
    "eval.fewshot.epochs=2",
    "eval.finetune.epochs=1",
    "eval.finetune.batch_size=32",
    "eval.seg.train_canvases=24",
    "eval.seg.test_canvases=8",
    "eval.seg.epochs=1",
    "eval.embedding_map.backend=tsne",
]

#: a DDP run equals one process only without the terms computed per rank: drop path (torch's RNG seeded
#: per rank) and KoLeo (nearest neighbours within a rank's batch, as in DINOv2); docs/reliability.md
DDP_EXACT = ["model.drop_path_rate=0.0", "sop.koleo_weight=0", "dino.koleo_weight=0", "ibot.koleo_weight=0"]

#: a SOP run of 2 epochs x 6 steps on 16 px crops (a ViT of 1 block), checkpointing every 4 steps.
#: AdamW eps 1e-4 (bench default 1e-8): CPU reductions are not bit-reproducible across allocations
#: (~1e-9, e.g. the mask-token gradient), and Adam at eps 1e-8 would turn that noise into +-lr steps
#: on parameters whose true gradient is exactly zero (attention key bias)
TINY_RUN = [
    "methods=[sop]",
    "threads=1",
    "optim.eps=1.0e-4",
    "train.epochs=2",
    "train.batch_size=16",
    "train.checkpoint_every_n_steps=4",
    "model.patch_size=4",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "crops.global_size=16",
    "crops.local_size=8",
    "crops.num_local=1",
    "head.head_hidden_dim=64",
    "head.dim=32",
    "dino.num_prototypes=64",
    "ibot.num_prototypes=64",
    "sop.class_memory_size=100",
    "sop.patch_memory_size=100",
    "sop.class_num_anchors=8",
    "sop.class_num_supports=2",
    "sop.class_num_sets=2",
    "sop.patch_num_anchors=16",
    "temps.warmup_teacher_temp_steps=4",
    "eval.every_epoch=false",
    "eval.linear_epochs=1",
    "eval.epoch_train_subset=32",
    "eval.epoch_test_subset=16",
    "eval.knn_k=5",
    "eval.retrieval_max_queries=16",
    "eval.corruptions=[]",
    "eval.sop_grid_rows=2",
    "eval.suite=[]",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "+trainer.enable_progress_bar=false",
]


def make_idx_dataset(root: Path, n_train: int = 96, n_test: int = 48, size: int = 28, seed: int = 0) -> Path:
    """Ten classes of bright squares (one grid cell per class) on noise, in Debian's Fashion-MNIST layout."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cell = size // 4
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, size, size)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            images[i, r * cell + 1 : (r + 1) * cell, col * cell + 1 : (col + 1) * cell] = 225
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def overrides(base: list[str], out: Path, data: Path, extra: list[str] | None = None) -> list[str]:
    """Hydra overrides of a tiny run writing to ``out``."""
    return [*base, f"out={out}", f"data.path={data}", *(extra or [])]


def compose_config(base: list[str], out: Path, data: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """The resolved config ``sop-bench`` would run with :func:`overrides`."""
    with initialize_config_module("sop_plugin.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides(base, out, data, extra))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


def bench_config(out: Path, data: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """:data:`TINY_BENCH` resolved."""
    return compose_config(TINY_BENCH, out, data, extra)


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module.

    For the GPU scripts, which run by path from a bundle on the device.
    """
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
