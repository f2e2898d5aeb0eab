"""Train one method on every rank: the Lightning trainer, its callbacks and what they measured."""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from sop_plugin.bench.checks import world_size
from sop_plugin.bench.evals.collapse import summarize_history
from sop_plugin.bench.inputs import IndexedImages, first
from sop_plugin.bench.settings import BenchSettings
from sop_plugin.bench.train.callbacks import (
    CollapseMonitor,
    KNNMonitor,
    LastCheckpoint,
    ResumableCSVLogger,
    StepTimer,
    reset_peak_rss,
)
from sop_plugin.bench.train.module import BenchModule
from sop_plugin.bench.train.sampler import GlobalBatchSampler, ResumableLoader
from sop_plugin.data import ArrayDataset
from sop_plugin.runtime import AtomicCheckpointIO

#: Lightning's warning about modules in eval mode when training starts
TEACHER_IN_EVAL = r"Found \d+ module\(s\) in eval mode at the start of training"


def trainer_options(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """The ``trainer`` section for ``L.Trainer``; plain DDP does not re-broadcast buffers every forward.

    Every buffer is already identical on every rank by construction (memories gathered,
    DINO/iBOT centres all-reduced), so DDP's per-step broadcast from rank 0 would only
    copy the memories (MBs) for nothing.
    """
    kwargs = dict(trainer)
    if world_size(kwargs) > 1 and kwargs.get("strategy", "auto") in ("ddp", "auto"):
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        kwargs["strategy"] = DDPStrategy(**{"forward_sync_buffers" if newer else "broadcast_buffers": False})
    return kwargs


@dataclass
class Fitted:
    """A trained method: the module, the trainer and what the callbacks measured."""

    module: BenchModule
    trainer: L.Trainer
    curve: list[tuple[float, float]]
    seconds: float
    steps: dict[str, float]  # StepTimer.summary(): median, p90, max, sum
    collapse: dict[str, Any] | None = field(default=None)  # collapse.summarize_history(); None: not measured


def fit_method(
    method: str,
    settings: BenchSettings,
    train: ArrayDataset,
    test: ArrayDataset,
    out: Path,
    ckpt_path: str | Path | None = None,
    callbacks: list[L.Callback] | None = None,
) -> Fitted:
    """Train one method (resuming from ``ckpt_path`` if given) on every rank."""
    seed = settings.seed
    L.seed_everything(seed, workers=True)
    t = settings.train
    module_settings = settings.module(method, settings.total_steps(len(train)))
    module = BenchModule(module_settings, train.images.shape[1], train.mean, train.std)
    sampler = GlobalBatchSampler(len(train), t.batch_size, seed, position=module.data_position)
    loader = ResumableLoader(IndexedImages(train), batch_sampler=sampler, num_workers=t.num_workers)
    e = settings.eval
    knn_cb = KNNMonitor(
        first(train.images, e.epoch_train_subset),
        first(train.labels, e.epoch_train_subset),
        first(test.images, e.epoch_test_subset),
        first(test.labels, e.epoch_test_subset),
        k=e.knn_k,
        temperature=e.knn_temperature,
        every_epoch=e.every_epoch,
    )
    probe_n = min(len(train), e.collapse_probe_images)  # 0: no collapse diagnostics
    collapse_cb: list[CollapseMonitor] = []
    if probe_n:
        monitor = CollapseMonitor(
            train.images[:probe_n],
            k=e.collapse_knn_k,
            seed=seed,
            every_epoch=e.every_epoch,
            every_n_steps=e.collapse_every_n_steps,
        )
        collapse_cb.append(monitor)
    timer = StepTimer()  # keeps its times (and the training seconds) across a resume
    method_dir = out / method
    ckpt = LastCheckpoint(method_dir / "checkpoints", every_n_steps=t.checkpoint_every_n_steps or 0)
    trainer = L.Trainer(
        max_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        default_root_dir=str(method_dir),
        logger=ResumableCSVLogger(str(out), name=method, version=""),
        callbacks=[knn_cb, *collapse_cb, timer, ckpt, *(callbacks or [])],
        plugins=[AtomicCheckpointIO(trust_checkpoint=settings.trust_checkpoint)],
        enable_model_summary=False,
        use_distributed_sampler=False,
        **trainer_options(settings.trainer),
    )
    reset_peak_rss()
    start = time.perf_counter()
    with warnings.catch_warnings():
        # the teacher is in eval mode on purpose (deterministic: no drop path);
        # Lightning >= 2.4 warns about it
        warnings.filterwarnings("ignore", message=TEACHER_IN_EVAL)
        trainer.fit(module, loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.perf_counter() - start + timer.resumed_seconds
    collapse = None
    if collapse_cb:
        collapse = summarize_history(collapse_cb[0].history, probe_n, e.collapse_knn_k)
    return Fitted(module, trainer, knn_cb.curve, seconds, timer.summary(), collapse)
