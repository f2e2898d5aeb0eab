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

The trainers themselves (a synthetic batch, the module, a bare Trainer) are
:mod:`~sop_plugin.perf.fitting`'s; the peak memory of each method, measured on its own, is
:mod:`~sop_plugin.perf.memory`'s.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor

from sop_plugin.perf.breakdown import attach, split_step
from sop_plugin.perf.fitting import build_module, fit, make_batch, release
from sop_plugin.perf.settings import METHODS
from sop_plugin.perf.timing import EventSpan, KernelClock, Stopwatch, sync

__all__ = ["METHODS", "Baton", "PerfCallback", "StepTiming", "time_methods"]


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


# ---------------------------------------------------------------------------- turn taking


class Baton:
    """Lets one trainer thread step at a time, in round-robin order over the trainers still running."""

    def __init__(self, names: list[str]) -> None:
        self.cond = threading.Condition()
        self.order = list(names)
        self.turn: str | None = None

    def wait(self, name: str) -> None:
        """Block until it is ``name``'s turn."""
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, retire: bool = False) -> None:
        """End ``name``'s turn: the next trainer in order steps; with ``retire``, ``name``
        leaves the order for good (its fit ended). A trainer no longer in the order is ignored."""
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
        """Give the first turn to the first trainer (after every trainer has set up)."""
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
        """Wait for the turn, then start the step's clocks (and the
        profiler or the breakdown timers where this step carries them)."""
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
        """Breakdown: the forward and the objective end here."""
        if self._stack is not None:
            self._mark = self.timer.now()

    def on_after_backward(self, trainer: L.Trainer, module: Any) -> None:
        """Breakdown: the backward's seconds."""
        if self._stack is not None:
            now = self.timer.now()
            self.timer.totals["backward"] += now - self._mark
            self._mark = now

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop the clocks, record the step where it is timed, profiled or
        broken down, and pass the turn on (the last step keeps it through the tear-down)."""
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
        """Take the breakdown timers off the module."""
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
    # SOP's breakdown timers: along every step on the CPU, after the timed and profiled steps on CUDA
    sop_breakdown_from = 0 if inline else warmup + steps + profiled
    callbacks = {
        m: PerfCallback(
            m,
            baton,
            device,
            warmup,
            steps,
            breakdown_from=sop_breakdown_from if m == "sop" else None,
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
    release(device)
    sop = callbacks.get("sop")
    fractions = sop.fractions if sop is not None else []
    return {
        "steps": {m: callbacks[m].record for m in methods},
        "breakdown": sop.breakdown if sop else [],
        "retrieval_fraction": statistics.median(fractions) if fractions else None,
    }
