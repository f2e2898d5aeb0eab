"""Training the benchmark's real module on a synthetic batch, for the step timing and the memory peak.

Both measurements of the step part train ``BenchModule`` (the module ``sop-bench`` trains) with a bare
``lightning.Trainer`` on copies of one synthetic batch, so that a measured step is a benchmark step
and the data loader costs nothing: :mod:`~sop_plugin.perf.step` times the steps,
:mod:`~sop_plugin.perf.memory` reads the peak memory.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.module import BenchModule

#: a synthetic batch as the benchmark's loader yields it: (images [B, C, S, S] uint8, labels [B], ids [B])
Batch = tuple[Tensor, ...]


class _SameBatch(Dataset):
    """``length`` copies of one batch (the loader yields it as is: ``batch_size=None``)."""

    def __init__(self, batch: Batch, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Batch:
        return self.batch


def make_batch(cfg: dict[str, Any], channels: int, seed: int = 0) -> Batch:
    """A synthetic uint8 batch on the CPU: ``train.batch_size`` images at ``crops.global_size`` px.

    Returns (images [B, channels, S, S] uint8, labels [B] in 0..9, dataset ids [B]).
    """
    b, size = int(cfg["train"]["batch_size"]), int(cfg["crops"]["global_size"])
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, channels, size, size), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (b,), generator=gen), torch.arange(b)


def build_module(cfg: dict[str, Any], method: str, channels: int) -> BenchModule:
    """The benchmark's module for ``method``, seeded by ``cfg["seed"]``.

    Its schedules are laid out for a 1,000-step run; timing needs far fewer steps.
    """
    torch.manual_seed(int(cfg.get("seed", 0)))
    norm = (0.5,) * channels
    return BenchModule(bench_settings(cfg).module(method, 1000), channels, norm, norm)


def fit(
    module: BenchModule, batch: Batch, steps: int, device: torch.device, callbacks: Sequence[L.Callback] = ()
) -> None:
    """Train ``module`` for ``steps`` steps on copies of ``batch`` with a bare Trainer.

    bf16-mixed on CUDA, fp32 on the CPU; no logger, checkpoint, progress bar or sanity check.
    """
    cuda = device.type == "cuda"
    precision = "bf16-mixed" if cuda else "32-true"
    hardware = {"accelerator": "gpu" if cuda else "cpu", "devices": 1, "precision": precision}
    bare = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    trainer = L.Trainer(max_steps=steps, max_epochs=1, callbacks=list(callbacks), **hardware, **bare)
    trainer.fit(module, DataLoader(_SameBatch(batch, steps), batch_size=None))


def release(device: torch.device) -> None:
    """Free what finished trainers left: Python garbage, and CUDA's cached blocks on CUDA."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
