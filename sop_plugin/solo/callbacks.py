"""Callbacks the launchers add to any solo-learn method: wall clock, clean kNN, a loud empty run,
a checkpoint on SIGTERM/SIGINT.

* :class:`WallClock` logs ``wall_time_s`` (seconds since training started) at every epoch end,
  which ``sop-solo-compare`` turns into wall time and steps per second, and prints one console line
  per epoch with the validation accuracies (solo-learn logs them to the loggers only).
* :class:`CleanKNN` scores a temperature-weighted cosine kNN (k = 20, T = 0.07, as the benchmark)
  on *clean* features: the student backbone on un-augmented train images as the bank and the
  validation images as queries, logged as ``val_clean_knn_acc1``. solo-learn's online kNN
  instead banks the augmented crops of the current epoch (and counts classes from the
  validation labels). The search is FAISS' exact inner product (on the GPU with faiss-gpu), so
  an ImageNet-size bank fits.
* :class:`NothingTrained` says loudly when ``fit`` returns without a single optimisation step
  (e.g. auto-resume found a finished run with the same name).
* :func:`interrupt_callback` stops at a signal with a checkpoint where solo-learn's Checkpointer
  (and its auto-resume) expect it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from omegaconf import DictConfig
from solo.utils.misc import omegaconf_select
from torch import Tensor, nn

from sop_plugin.runtime.interrupt import InterruptCallback
from sop_plugin.runtime.knn import knn_votes
from sop_plugin.runtime.signals import SignalCatcher

log = logging.getLogger(__name__)


#: the accuracies :class:`WallClock` prints after each epoch, where logged
SHOWN = ("val_knn_acc1", "val_clean_knn_acc1", "val_acc1", "val_loss")


class WallClock(Callback):
    """Logs ``wall_time_s`` since ``on_train_start`` at each training epoch end and prints the epoch's
    accuracies."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        wall = time.perf_counter() - self.start
        pl_module.log("wall_time_s", wall, on_epoch=True, rank_zero_only=True)
        metrics = trainer.callback_metrics
        shown = [f"{k} {float(metrics[k]):.2f}" for k in SHOWN if k in metrics]
        if trainer.is_global_zero and shown:  # validation ran before this hook
            print(f"epoch {trainer.current_epoch}: " + ", ".join(shown) + f" ({wall:.0f} s)", flush=True)


@torch.no_grad()
def extract(backbone: nn.Module, loader: Any, device: torch.device, limit: int = -1) -> tuple[Tensor, Tensor]:
    """L2-normalised features [N, D] (CPU) and labels [N] of ``loader`` (at most ``limit`` when > 0)."""
    feats, labels, seen = [], [], 0
    for batch in loader:
        x, y = batch[-2], batch[-1]
        feats.append(F.normalize(backbone(x.to(device)).float(), dim=1).cpu())
        labels.append(torch.as_tensor(y).cpu())
        seen += len(y)
        if 0 < limit <= seen:
            break
    x, y = torch.cat(feats), torch.cat(labels)
    return (x[:limit], y[:limit]) if limit > 0 else (x, y)


def knn_accuracy(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor, k: int, temperature: float
) -> float:
    """Top-1 accuracy (%) of the exp(sim / T)-weighted kNN vote of the bank [N, D] with ``bank_labels``
    [N] for the ``queries`` [M, D] with ``labels`` [M] (:func:`~sop_plugin.runtime.knn.knn_votes`).

    Features L2-normalised, searched with FAISS (exact inner product) so that an ImageNet-size bank
    fits.
    """
    from sop_plugin.core.retrieval import get_retrieval
    from sop_plugin.core.retrieval.faiss_backend import faiss_gpu_available

    if faiss_gpu_available():  # faiss-gpu: brute force on the device
        bank, queries = bank.cuda(), queries.cuda()
    sims, idx = get_retrieval("faiss").search(queries, bank, min(k, bank.shape[0]))
    sims, idx, bank_labels = sims.cpu(), idx.cpu(), bank_labels.cpu()
    classes = int(max(bank_labels.max(), labels.max())) + 1
    votes = knn_votes(sims, bank_labels[idx.clamp_min(0)], temperature, classes)
    return 100.0 * float((votes.argmax(1) == labels).float().mean())


class CleanKNN(Callback):
    """kNN accuracy on clean train/val features after each ``every_n_epochs``-th validation.

    Args:
        train_loader: the training images with the *validation* transform, yielding ``(x, y)``.
        val_loader: the validation images, yielding ``(x, y)``.
        k, temperature: neighbours and vote temperature.
        every_n_epochs: score every n-th epoch (and the last).
        max_train: bank size cap (the first ``max_train`` images; -1 = all).
    """

    def __init__(
        self,
        train_loader: Any,
        val_loader: Any,
        k: int = 20,
        temperature: float = 0.07,
        every_n_epochs: int = 1,
        max_train: int = -1,
    ) -> None:
        if k < 1 or temperature <= 0 or every_n_epochs < 1:
            got = f"(got {k}, {temperature}, {every_n_epochs})"
            raise ValueError(f"clean_knn: need k >= 1, temperature > 0, frequency >= 1 {got}")
        self.train_loader, self.val_loader = train_loader, val_loader
        self.k, self.temperature, self.every, self.max_train = k, temperature, every_n_epochs, max_train

    def score(self, backbone: torch.nn.Module, device: torch.device) -> float:
        """The clean kNN accuracy of ``backbone`` (put in eval mode, then restored)."""
        was_training = backbone.training
        backbone.eval()
        try:
            bank, bank_y = extract(backbone, self.train_loader, device, self.max_train)
            queries, y = extract(backbone, self.val_loader, device)
        finally:
            backbone.train(was_training)
        return knn_accuracy(bank, bank_y, queries, y, self.k, self.temperature)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if trainer.sanity_checking or not (last or (epoch + 1) % self.every == 0):
            return
        acc = self.score(pl_module.backbone, pl_module.device)
        pl_module.log("val_clean_knn_acc1", acc, on_epoch=True, rank_zero_only=True)


class NothingTrained(Callback):
    """Warns on stderr when ``fit`` ends without an optimisation step of its own (``trained_nothing``:
    the launchers then exit non-zero)."""

    trained_nothing = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.first_step = None
        self.trained_nothing = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.first_step = trainer.global_step

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.first_step is None or trainer.global_step <= self.first_step:
            self.trained_nothing = True
            print(
                f"WARNING: this run trained nothing (global step {trainer.global_step} at start and "
                "end): a resumed checkpoint had already reached max_epochs. With "
                "auto_resume.enabled=True, solo-learn resumes the newest run of the same name and "
                "method in checkpoint.dir; give the run another name=..., or set "
                "auto_resume.enabled=False, or raise max_epochs",
                file=sys.stderr,
                flush=True,
            )


def interrupt_callback(cfg: DictConfig, catcher: SignalCatcher, logdir: str) -> InterruptCallback:
    """Stops training at the next batch end after SIGTERM/SIGINT, with a checkpoint of that step.

    The checkpoint goes where solo-learn's Checkpointer writes
    (``<name>-<version>-ep=E-step=N.ckpt``), or to ``<logdir>/interrupted/`` without one. With
    ``checkpoint.keep_prev=False`` it replaces the Checkpointer's previous file, as the next
    epoch's would, so that solo-learn's auto-resume (which takes the first ``.ckpt`` it lists in a
    run's directory) finds it.
    """
    from solo.utils.checkpointer import Checkpointer

    def checkpointer(trainer) -> Any:
        """solo-learn's Checkpointer of this run, if it writes files."""
        found = [cb for cb in trainer.callbacks if isinstance(cb, Checkpointer)]
        found = [cb for cb in found if getattr(cb, "path", None)]
        return found[0] if found else None

    def path(trainer) -> Path:
        """Where the checkpoint of the interrupted step goes."""
        where = f"{trainer.current_epoch}-step={trainer.global_step}"
        ckpt = checkpointer(trainer)
        if ckpt is not None:
            return Path(ckpt.path) / ckpt.ckpt_placeholder.format(where)
        return Path(logdir) / "interrupted" / f"{cfg.name}-ep={where}.ckpt"

    def saved(trainer, path: Path) -> None:
        """Make the new checkpoint the Checkpointer's latest (replacing the previous one unless kept)."""
        ckpt = checkpointer(trainer)
        if ckpt is None:
            return
        previous = getattr(ckpt, "last_ckpt", None)
        if trainer.is_global_zero and previous and Path(previous) != path and not ckpt.keep_prev:
            Path(previous).unlink(missing_ok=True)
        ckpt.last_ckpt = path

    method = str(cfg.method) if "method" in cfg else None
    return InterruptCallback(catcher, path, method=method, on_saved=saved)


def clean_knn_from_cfg(cfg: Any, val_loader: Any) -> CleanKNN | None:
    """The :class:`CleanKNN` of ``cfg.clean_knn`` (None when off), banking the training images
    with ``val_loader``'s transform (image folders and CIFAR)."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

    if not omegaconf_select(cfg, "clean_knn.enabled", False) or val_loader is None:
        return None
    val = val_loader.dataset
    if isinstance(val, (CIFAR10, CIFAR100)):
        train = type(val)(val.root, train=True, transform=val.transform)
    elif isinstance(val, ImageFolder):
        train = ImageFolder(str(cfg.data.train_path), transform=val.transform)
    else:
        raise ValueError(f"clean_knn supports image folders and CIFAR, not {type(val).__name__}")
    loader = DataLoader(train, batch_size=val_loader.batch_size, num_workers=val_loader.num_workers)
    return CleanKNN(
        loader,
        val_loader,
        k=int(omegaconf_select(cfg, "clean_knn.k", 20)),
        temperature=float(omegaconf_select(cfg, "clean_knn.temperature", 0.07)),
        every_n_epochs=int(omegaconf_select(cfg, "clean_knn.frequency", 1)),
        max_train=int(omegaconf_select(cfg, "clean_knn.max_train", -1)),
    )
