"""Timing the benchmark's real training step for SOP, iBOT and DINO at equal settings.

Each method is trained by a real ``lightning.Trainer`` on its ``BenchModule``, so a
timed step is exactly a benchmark step: multi-crop augmentation, masks, student and
teacher forward, the objective, backward, AdamW, LR schedule and the teacher EMA (bf16
autocast on CUDA via ``precision=bf16-mixed``), whatever hooks the module uses for them.
The three trainers run in threads that take turns step by step (a baton passed in
round-robin order), so the methods are interleaved and share a loaded machine's
fluctuations fairly; a trainer sets up before the turns start and keeps the baton
through its tear-down, so neither overlaps another trainer's step.

On CUDA each timed step is also timed by CUDA events on the device (``StepTiming.gpu``), and
``profile_steps`` untimed steps after the timed ones are run under torch.profiler to sum the GPU's
kernel time (``StepTiming.kernel``): a step whose kernel time is far below its wall time waits for
the host, one whose kernel time is close to it is set by the GPU.

Peak memory is measured per method on its own: process RSS (VmHWM) in a fresh process
on CPU (glibc's mmap threshold fixed, see :data:`MALLOC_ENV`), ``torch.cuda.max_memory_allocated``
above the pre-build level on GPU.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sop_plugin.bench.callbacks import peak_rss_mb, reset_peak_rss
from sop_plugin.bench.module import BenchModule
from sop_plugin.perf.breakdown import attach, split_step
from sop_plugin.perf.settings import METHODS
from sop_plugin.perf.timing import EventSpan, KernelClock, Stopwatch, in_thread, quiet_lightning, sync

__all__ = ["METHODS", "StepTiming", "measure_peak", "peak_memory", "quiet_lightning", "time_methods"]


@dataclass
class StepTiming:
    """Per-step seconds of one method.

    Attributes:
        wall: wall-clock seconds of each timed step (synchronised on CUDA).
        cpu: process CPU seconds of each timed step.
        gpu: CUDA-event seconds of each timed step (empty off CUDA).
        kernel: GPU kernel seconds of each profiled step (after the timed ones; empty off CUDA).
        kernel_wall: wall seconds of the same profiled steps.
        kernel_error: why kernel timing is missing, where the profiler failed.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    gpu: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)
    kernel_wall: list[float] = field(default_factory=list)
    kernel_error: str | None = None


class _SameBatch(Dataset):
    """``length`` copies of one batch (the loader yields it as is: ``batch_size=None``)."""

    def __init__(self, batch: tuple[Tensor, ...], length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return self.batch


def make_batch(cfg: dict[str, Any], channels: int, seed: int = 0) -> tuple[Tensor, ...]:
    """A synthetic uint8 batch (images, labels, dataset ids) on the CPU, as the benchmark's loader yields."""
    b, size = int(cfg["train"]["batch_size"]), int(cfg["crops"]["global_size"])
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, channels, size, size), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (b,), generator=gen), torch.arange(b)


def build_module(cfg: dict[str, Any], method: str, channels: int) -> BenchModule:
    """The benchmark's module for ``method``, its schedules laid out for a 1,000-step run (timing needs far fewer)."""
    torch.manual_seed(int(cfg.get("seed", 0)))
    norm = (0.5,) * channels
    return BenchModule(cfg, method, channels, norm, norm, total_steps=1000)


def fit(
    module: BenchModule, batch: tuple[Tensor, ...], steps: int, device: torch.device, callbacks: list[L.Callback]
) -> None:
    """Train ``module`` for ``steps`` steps on copies of ``batch`` with a bare Trainer."""
    cuda = device.type == "cuda"
    hardware = {"accelerator": "gpu" if cuda else "cpu", "devices": 1, "precision": "bf16-mixed" if cuda else "32-true"}
    bare = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(max_steps=steps, max_epochs=1, num_sanity_val_steps=0, callbacks=callbacks, **hardware, **bare)
    trainer.fit(module, DataLoader(_SameBatch(batch, steps), batch_size=None))


# ---------------------------------------------------------------------------- turn taking


class Baton:
    """Lets one trainer thread step at a time, in round-robin order over the trainers still running."""

    def __init__(self, names: list[str]) -> None:
        self.cond = threading.Condition()
        self.order = list(names)
        self.turn: str | None = None

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, retire: bool = False) -> None:
        with self.cond:
            if name not in self.order:
                return
            i = self.order.index(name)
            if retire:
                self.order.remove(name)
                nxt = self.order[i % len(self.order)] if self.order else None
            else:
                nxt = self.order[(i + 1) % len(self.order)]
            if self.turn == name:
                self.turn = nxt
            self.cond.notify_all()

    def start(self) -> None:
        with self.cond:
            self.turn = self.order[0] if self.order else None
            self.cond.notify_all()


class PerfCallback(L.Callback):
    """Waits for its turn, times each step (wall, CPU, CUDA events) and optionally SOP's breakdown.

    Steps before ``warmup`` are untimed; the ``profile_steps`` steps after the timed ones sum the GPU's
    kernel time (CUDA only); the breakdown timers ride along from ``breakdown_from`` (on CUDA they
    synchronise, so they start after the timed and profiled steps there).
    """

    def __init__(
        self,
        name: str,
        baton: Baton | None,
        device: torch.device,
        warmup: int,
        timed: int,
        breakdown_from: int | None = None,
        profile_steps: int = 0,
    ) -> None:
        self.name, self.baton, self.device = name, baton, device
        self.warmup, self.timed, self.breakdown_from = warmup, timed, breakdown_from
        self.profile_steps = profile_steps if device.type == "cuda" else 0
        self.ready = threading.Event()
        self.record = StepTiming()
        self.breakdown: list[dict[str, float]] = []
        self.fractions: list[float] = []
        self.timer = Stopwatch(device)
        self.events = EventSpan(device)
        self.kernels = KernelClock()
        self._profiling = False
        self._stack: Any = None
        self._t0 = self._c0 = self._mark = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self.ready.set()
        if self.baton is not None:
            self.baton.wait(self.name)
        if self.breakdown_from is not None and batch_idx >= self.breakdown_from and self._stack is None:
            self._stack = attach(module, self.timer)
        self.timer.pop()
        sync(self.device)
        first_profiled = self.warmup + self.timed
        self._profiling = first_profiled <= batch_idx < first_profiled + self.profile_steps
        if self._profiling:
            self.kernels.start()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self.events.start()

    def on_before_backward(self, trainer: L.Trainer, module: Any, loss: Tensor) -> None:
        if self._stack is not None:
            self._mark = self.timer.now()

    def on_after_backward(self, trainer: L.Trainer, module: Any) -> None:
        if self._stack is not None:
            now = self.timer.now()
            self.timer.totals["backward"] += now - self._mark
            self._mark = now

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.events.stop()
        sync(self.device)
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        if self._profiling:
            busy = self.kernels.stop()
            if busy is not None:
                self.record.kernel.append(busy)
                self.record.kernel_wall.append(wall)
            self.record.kernel_error = self.kernels.error
        if self._stack is not None:
            self.timer.totals["optimizer_ema"] += time.perf_counter() - self._mark
            raw = self.timer.pop()
            if batch_idx >= self.warmup:
                self.breakdown.append(split_step(raw, wall))
                self.fractions.append(raw.get("retrieval", 0.0) / wall)
        if self.warmup <= batch_idx < self.warmup + self.timed:
            self.record.wall.append(wall)
            self.record.cpu.append(cpu)
            gpu = self.events.seconds()
            if gpu is not None:
                self.record.gpu.append(gpu)
        last = batch_idx + 1 >= trainer.max_steps
        if self.baton is not None and not last:
            self.baton.pass_on(self.name)

    def teardown(self, trainer: L.Trainer, module: Any, stage: str) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def time_methods(
    cfg: dict[str, Any],
    channels: int,
    device: torch.device,
    warmup: int,
    steps: int,
    methods: tuple[str, ...] = METHODS,
    breakdown_steps: int = 3,
    profile_steps: int = 2,
) -> dict[str, Any]:
    """Interleaved step timing of ``methods`` plus SOP's per-category breakdown.

    Returns ``{"steps": {method: StepTiming}, "breakdown": [per-step category seconds],
    "retrieval_fraction": median per-step share of retrieval in SOP's step}``. On CPU the
    breakdown timers ride along the timed SOP steps (microseconds, no synchronisation); on
    CUDA ``profile_steps`` extra steps per method measure the GPU's kernel time and then
    ``breakdown_steps`` extra SOP steps carry the breakdown timers.
    """
    batch = make_batch(cfg, channels)
    baton = Baton(list(methods))
    inline = device.type != "cuda"
    profiled = 0 if inline else max(0, profile_steps)
    callbacks = {
        m: PerfCallback(
            m,
            baton,
            device,
            warmup,
            steps,
            breakdown_from=(0 if inline else warmup + steps + profiled) if m == "sop" else None,
            profile_steps=profiled,
        )
        for m in methods
    }
    errors: list[BaseException] = []

    def run(m: str) -> None:
        try:
            extra = profiled + (0 if inline or m != "sop" else breakdown_steps)
            fit(build_module(cfg, m, channels), batch, warmup + steps + extra, device, [callbacks[m]])
            gc.collect()  # the finished trainer's memory goes while it still holds the baton
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            errors.append(err)
        finally:
            callbacks[m].ready.set()
            baton.pass_on(m, retire=True)

    threads = []
    for m in methods:  # set-up one at a time: each waits for the baton at its first step
        th = threading.Thread(target=run, args=(m,), name=f"perf-{m}", daemon=True)
        th.start()
        callbacks[m].ready.wait()
        threads.append(th)
    baton.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    _release(device)
    sop = callbacks.get("sop")
    fractions = sop.fractions if sop is not None else []
    return {
        "steps": {m: callbacks[m].record for m in methods},
        "breakdown": sop.breakdown if sop else [],
        "retrieval_fraction": statistics.median(fractions) if fractions else None,
    }


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- peak memory


class PeakCallback(L.Callback):
    """Resets the peak after the first step (optimiser state allocated) and reads it at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = float("nan")
        self.base = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1:
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
    _release(device)
    cb = PeakCallback(device)
    if device.type == "cuda":
        cb.base = torch.cuda.memory_allocated(device)  # what other code holds: not this method's
    in_thread(fit, build_module(cfg, method, channels), make_batch(cfg, channels), max(2, steps), device, [cb])
    _release(device)
    return float(cb.peak_mb)


#: glibc's mmap threshold in the memory-measuring processes: a fixed 128 KiB instead of glibc's
#: dynamic one, so freed large buffers leave RSS at once and the peak reflects live memory
#: rather than allocation history (the same for every method)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _context() -> mp.context.BaseContext:
    """forkserver with this module preloaded (one import, clean children); spawn elsewhere.

    The children inherit :data:`MALLOC_ENV` (glibc reads it when a process starts).
    """
    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["sop_plugin.perf.step"])
        return ctx
    return mp.get_context("spawn")


def peak_memory(
    cfg: dict[str, Any], methods: tuple[str, ...], channels: int, device: torch.device, isolate: bool, steps: int = 2
) -> dict[str, float]:
    """:func:`measure_peak` for every method, each in a fresh process when ``isolate``."""
    out: dict[str, float] = {}
    for m in methods:
        if isolate:
            with _context().Pool(1) as pool:
                out[m] = pool.apply(measure_peak, (cfg, m, channels, str(device), steps))
        else:
            out[m] = measure_peak(cfg, m, channels, str(device), steps)
    return out
