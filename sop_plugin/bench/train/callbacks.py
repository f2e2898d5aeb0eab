"""Lightning callbacks of the benchmark.

Per-epoch kNN and collapse monitors, step timer, last checkpoint, CSV log.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from sop_plugin.bench.evals.collapse import measure_module
from sop_plugin.bench.evals.probes import knn_top1


class KNNMonitor(L.Callback):
    """kNN top-1 of the teacher's [CLS] features before training and after every epoch.

    Uses fixed subsets (first ``train_n`` train / ``test_n`` test images) so the curve
    is cheap; the final, full evaluation happens after training. Under DDP only rank 0
    measures (the others would compute the same numbers and discard them).
    """

    def __init__(
        self,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        k: int = 20,
        temperature: float = 0.07,
        every_epoch: bool = True,
    ) -> None:
        self.data = (train_images, train_labels, test_images, test_labels)
        self.k, self.temperature, self.every_epoch = k, temperature, every_epoch
        self.curve: list[tuple[float, float]] = []

    def _measure(self, trainer: L.Trainer, module: Any, epoch: float) -> None:
        if not trainer.is_global_zero:
            return
        tr_x, tr_y, te_x, te_y = self.data
        acc = knn_top1(
            module.features(tr_x), tr_y, module.features(te_x), te_y, k=self.k, temperature=self.temperature
        )
        self.curve.append((epoch, acc))
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"knn_top1_subset": acc, "epoch": epoch}, step=int(trainer.global_step)
            )

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if not self.curve:  # not again after a resume
            self._measure(trainer, module, 0.0)

    def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.every_epoch:
            self._measure(trainer, module, float(trainer.current_epoch + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [tuple(p) for p in state_dict.get("curve", [])]  # type: ignore[misc]


class CollapseMonitor(L.Callback):
    """Collapse diagnostics (:func:`sop_plugin.bench.evals.collapse.measure_module`) of the teacher on a fixed
    probe set: before training (epoch 0), after every epoch (``every_epoch``), every ``every_n_steps``
    optimisation steps (0: never; for curves within a short run, epoch = fractional) and at the end.

    Each measurement is logged as ``collapse/<stat>`` (with ``epoch``) and kept in ``history``
    (``{"epoch", "step", "seconds", <stat>: value or None}``), which travels in checkpoints so a
    resumed run reports the whole curve. Rank 0 only, like :class:`KNNMonitor`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        k: int = 8,
        seed: int = 0,
        every_epoch: bool = True,
        every_n_steps: int = 0,
    ) -> None:
        self.images, self.k, self.seed, self.every_epoch = images, k, seed, every_epoch
        self.every_n_steps = max(0, int(every_n_steps))
        self.history: list[dict[str, float | None]] = []

    def _measure(self, trainer: L.Trainer, module: Any, epoch: float) -> None:
        if not trainer.is_global_zero:
            return
        step = int(trainer.global_step)
        t0 = time.perf_counter()
        stats = measure_module(module, self.images, step, k=self.k, seed=self.seed)
        entry: dict[str, float | None] = {
            "epoch": epoch,
            "step": float(step),
            "seconds": time.perf_counter() - t0,
        }
        entry.update({key: (v if math.isfinite(v) else None) for key, v in stats.items()})
        # a measurement replaces those of the same or later epochs (an epoch redone after a resume)
        self.history = [h for h in self.history if float(h["epoch"] or 0.0) < epoch] + [entry]
        if trainer.logger is not None:
            logged = {
                f"collapse/{key}": v
                for key, v in entry.items()
                if key not in ("epoch", "step") and v is not None
            }
            trainer.logger.log_metrics({**logged, "epoch": epoch}, step=step)

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if not self.history:  # not again after a resume
            self._measure(trainer, module, 0.0)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        step = int(trainer.global_step)
        if self.every_n_steps and step % self.every_n_steps == 0 and not self._measured_at(step):
            self._measure(trainer, module, self._fractional_epoch(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.every_epoch:
            self._measure(trainer, module, float(trainer.current_epoch + 1))

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if not self._measured_at(int(trainer.global_step)):  # else the last measurement is the final one
            self._measure(trainer, module, self._fractional_epoch(trainer))

    def _measured_at(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == float(step)

    @staticmethod
    def _fractional_epoch(trainer: L.Trainer) -> float:
        per_epoch = (
            max(1, int(trainer.num_training_batches)) if math.isfinite(trainer.num_training_batches) else 0
        )
        return float(round(trainer.global_step / per_epoch, 3)) if per_epoch else float(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]


class StepTimer(L.Callback):
    """Wall seconds of each optimisation step (forward, backward, optimiser, EMA).

    The times travel in checkpoints, with the wall seconds of the fit so far
    (``resumed_seconds`` after a resume), so that a resumed run reports every step.
    """

    def __init__(self, skip: int = 5) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._t0 = 0.0
        self.resumed_seconds = 0.0  # wall seconds of the fits before the resume
        self._fit_t0 = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, module: Any) -> None:
        self._fit_t0 = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {
            "times": list(self.times),
            "seconds": self.resumed_seconds + time.perf_counter() - self._fit_t0,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.times = [float(t) for t in state_dict.get("times", [])]
        self.resumed_seconds = float(state_dict.get("seconds", 0.0))

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def summary(self) -> dict[str, float]:
        """Median, 90th percentile and max of the steps after ``skip``, and the sum of all steps.

        The median is robust to a busy machine; the tail and the sum show slow phases (a
        backend degrading as the memory fills, contention) that the median hides.
        """
        kept = self.times[self.skip :] or self.times
        if not kept:
            return {"median": float("nan"), "p90": float("nan"), "max": float("nan"), "sum": 0.0}
        ordered = sorted(kept)
        return {
            "median": statistics.median(kept),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max": ordered[-1],
            "sum": float(sum(self.times)),
        }


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_steps`` optimisation steps (0: never mid-epoch), after every
    epoch and when training ends, so a resume never loses more than ``every_n_steps`` steps."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        super().__init__(
            dirpath=str(dirpath),
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_steps or None,
            every_n_epochs=None if every_n_steps else 1,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_if_new(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_if_new(trainer)

    def _save_last_if_new(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger that keeps the rows of an interrupted run's ``metrics.csv`` on resume.

    Lightning >= 2.2 deletes an existing ``metrics.csv`` when the writer starts; Lightning
    < 2.2 (solo-learn pins 2.1.2) starts the writer with no columns and then fails to
    rewrite the earlier rows. Here the earlier rows are read first, put back if deleted,
    and their columns seed the writer. Steps redone after a mid-epoch resume appear twice
    (the later row is the one that counts).
    """

    @property
    def experiment(self) -> Any:  # noqa: D102
        if self._experiment is not None or rank_zero_only.rank != 0:
            return CSVLogger.experiment.fget(self)  # type: ignore[attr-defined]
        path = os.path.join(self.log_dir, "metrics.csv")
        rows: list[dict[str, str]] = []
        header: list[str] = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, header = list(reader), list(reader.fieldnames or [])
        writer = CSVLogger.experiment.fget(self)  # type: ignore[attr-defined]
        if header:
            writer.metrics_keys.extend(k for k in header if k not in writer.metrics_keys)
            if not os.path.isfile(path):
                with open(path, "w", newline="") as f:
                    out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                    out.writeheader()
                    out.writerows(rows)
        return writer


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
