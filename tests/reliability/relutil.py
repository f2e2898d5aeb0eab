"""Helpers for the reliability tests: tiny data, a tiny config, loss capture, simulated crashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sop_plugin.data import write_idx

#: a ViT of 1 block on 16x16 crops; 96 images, batch 16 -> 6 steps per epoch.
#: AdamW eps 1e-6 (bench default 1e-8): CPU reductions are not bit-reproducible across
#: allocations (~1e-9, e.g. the mask-token gradient), and Adam at eps 1e-8 would turn that
#: noise into +-lr steps on parameters whose true gradient is exactly zero (attention key bias)
TINY = [
    "methods=[sop]", "threads=1", "optim.eps=1.0e-4", "train.epochs=2", "train.batch_size=16", "train.checkpoint_every_n_steps=4",
    "model.patch_size=4", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
    "crops.global_size=16", "crops.local_size=8", "crops.num_local=1",
    "head.hidden_dim=64", "head.bottleneck_dim=32", "dino.head.out_dim=64", "ibot.head.out_dim=64",
    "sop.sop.class_memory_size=100", "sop.sop.patch_memory_size=100", "sop.sop.class_num_anchors=8",
    "sop.sop.class_num_supports=2", "sop.sop.class_num_sets=2", "sop.sop.patch_num_anchors=16",
    "temps.warmup_steps=4", "eval.every_epoch=false", "eval.linear_epochs=1", "eval.epoch_train_subset=32",
    "eval.epoch_test_subset=16", "eval.knn_k=5", "eval.retrieval_max_queries=16", "eval.corruptions=[]",
    "eval.sop_grid_rows=2", "trainer.log_every_n_steps=1", "trainer.accelerator=cpu",
    "+trainer.enable_progress_bar=false",
]


def make_idx_dataset(root: Path, n_train: int = 96, n_test: int = 32, size: int = 16, seed: int = 0) -> Path:
    """Class-dependent bright squares on noise, written as Fashion-MNIST IDX files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 2)
            images[i, 2 + r * 7 : 7 + r * 7, 2 + col * 7 : 7 + col * 7] = 230
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def overrides(out: Path, data: Path, extra: list[str] | None = None) -> list[str]:
    """Hydra overrides of a tiny run writing to ``out``."""
    return [*TINY, f"out={out}", f"data.path={data}", *(extra or [])]


def tiny_config(out: Path, data: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """The resolved config ``sop-bench`` would run with :func:`overrides`."""
    with initialize_config_module("sop_plugin.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides(out, data, extra))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


class LossRecorder(L.Callback):
    """Per-step training loss, keyed by the step that produced it."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[int(trainer.global_step) - 1] = float(loss)


class Crash(RuntimeError):
    """A simulated failure."""


class CrashAtStep(L.Callback):
    """Raise :class:`Crash` when step ``step`` is about to start (after its checkpoints were written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash before step {self.step}")


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (student, teacher, heads, memories), detached on CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max(((k, float((a[k].double() - b[k].double()).abs().max())) for k in a if a[k].numel()),
                key=lambda kv: kv[1])
    assert worst[1] <= atol, f"largest difference {worst[1]:.3g} in {worst[0]}"
