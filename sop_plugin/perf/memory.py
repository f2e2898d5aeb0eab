"""Peak memory of training each method on its own, for the step part of ``sop-perf``.

On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the method's module was
built. On the CPU: the process's peak RSS (VmHWM), in a fresh process per method when isolated (a
process's RSS keeps what earlier work left), with glibc's mmap threshold fixed (:data:`MALLOC_ENV`).
The peak is taken over the steps after the first, which allocates the optimiser state.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

import lightning as L
import torch

from sop_plugin.bench.train.callbacks import peak_rss_mb, reset_peak_rss
from sop_plugin.perf.fitting import build_module, fit, make_batch, release
from sop_plugin.perf.timing import in_thread, quiet_lightning, sync

#: glibc's mmap threshold in the memory-measuring processes: a fixed 128 KiB instead of glibc's
#: dynamic one, so freed large buffers leave RSS at once and the peak reflects live memory
#: rather than allocation history (the same for every method)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class PeakCallback(L.Callback):
    """Resets the peak after the first step (optimiser state allocated) and reads it at the end.

    ``peak_mb``: MiB above ``base`` (set by the caller on CUDA) once training ended; NaN before.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = float("nan")
        self.base = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx != 1:
            return
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.peak_mb = peak_rss_mb()


def measure_peak(cfg: dict[str, Any], method: str, channels: int, device_name: str, steps: int = 2) -> float:
    """Peak memory (MiB) of training ``method`` alone for ``steps`` steps (RSS on CPU, allocated on CUDA).

    The peak is taken over the steps after the first (which allocates the optimiser state),
    with everything resident: model, teacher, heads, optimiser state, memories, buffers.
    """
    quiet_lightning()
    device = torch.device(device_name)
    release(device)
    cb = PeakCallback(device)
    if device.type == "cuda":
        cb.base = torch.cuda.memory_allocated(device)  # what other code holds: not this method's
    module = build_module(cfg, method, channels)
    in_thread(fit, module, make_batch(cfg, channels), max(2, steps), device, [cb])
    release(device)
    return float(cb.peak_mb)


def _context() -> mp.context.BaseContext:
    """forkserver with this module preloaded (one import, clean children); spawn elsewhere.

    The children inherit :data:`MALLOC_ENV` (glibc reads it when a process starts).
    """
    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["sop_plugin.perf.memory"])
        return ctx
    return mp.get_context("spawn")


def peak_memory(
    cfg: dict[str, Any],
    methods: tuple[str, ...],
    channels: int,
    device: torch.device | str,
    isolate: bool,
    steps: int = 2,
) -> dict[str, float]:
    """:func:`measure_peak` of every method, ``{method: MiB}``, each in a fresh process when ``isolate``."""
    out: dict[str, float] = {}
    for m in methods:
        args = (cfg, m, channels, str(device), steps)
        if isolate:
            with _context().Pool(1) as pool:
                out[m] = pool.apply(measure_peak, args)
        else:
            out[m] = measure_peak(*args)
    return out
