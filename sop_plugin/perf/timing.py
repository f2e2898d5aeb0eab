"""Clocks of ``sop-perf``: device-synchronised seconds, CUDA event spans, GPU kernel time, a per-label
phase timer, worker threads."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def quiet_lightning() -> None:
    """Keep Lightning's per-trainer banners ("GPU available", tips) and faiss' loader lines out of the
    output: only their warnings and errors are printed."""
    for name in ("lightning.pytorch", "lightning.fabric", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EventSpan:
    """Device-side seconds between :meth:`start` and :meth:`stop` from CUDA events (CUDA devices only).

    The events are recorded on the current stream, so the span is the time the GPU took from the
    first to the last work queued between the two calls, idle gaps included. Off CUDA it measures
    nothing and :meth:`seconds` returns None.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._start: Any = None
        self._stop: Any = None

    def start(self) -> None:
        """Record the start event on the current stream (nothing off CUDA)."""
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()

    def stop(self) -> None:
        """Record the stop event on the current stream (nothing off CUDA)."""
        if self.cuda:
            self._stop = torch.cuda.Event(enable_timing=True)
            self._stop.record()

    def seconds(self) -> float | None:
        """The span in seconds (waits for the stop event), or None off CUDA or before start/stop."""
        if not self.cuda or self._start is None or self._stop is None:
            return None
        self._stop.synchronize()
        return float(self._start.elapsed_time(self._stop)) / 1e3


class KernelClock:
    """Seconds the GPU spent in kernels and copies between :meth:`start` and :meth:`stop` (torch.profiler).

    Where CUDA events give the span of a step, idle gaps included, this sums the durations of the device
    activities the profiler records (one stream: the GPU's busy time). Any profiler failure turns the
    measurement off (:meth:`stop` returns None and ``error`` says why) instead of failing the run.
    """

    def __init__(self) -> None:
        self._prof: Any = None
        self.error: str | None = None

    def start(self) -> None:
        """Start profiling the GPU's activities (nothing once profiling has failed)."""
        if self.error is not None:
            return
        try:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CUDA])
            self._prof.start()
        except Exception as err:  # noqa: BLE001 - a measurement, never a reason to stop the run
            self._prof, self.error = None, f"{type(err).__name__}: {err}"

    def stop(self) -> float | None:
        """Busy seconds since :meth:`start` (None when profiling failed)."""
        if self._prof is None:
            return None
        prof, self._prof = self._prof, None
        try:
            prof.stop()
            return device_busy_seconds(prof.events())
        except Exception as err:  # noqa: BLE001 - as in start
            self.error = f"{type(err).__name__}: {err}"
            return None


def device_busy_seconds(events: Any) -> float:
    """Summed duration (s) of the device-side events (kernels, memcpy, memset) of a profiler's event list."""
    from torch.autograd import DeviceType

    total_us = 0.0
    for e in events:
        if getattr(e, "device_type", None) == DeviceType.CUDA:
            total_us += e.time_range.elapsed_us()
    return total_us / 1e6


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``repeats`` synchronised calls of ``fn``."""
    runs = []
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


class Stopwatch:
    """Wall seconds per label, summed over a step.

    It fits the timing hook of ``SOPObjective.timer`` and ``BenchModule.timer``
    (:class:`sop_plugin.core.timing.PhaseTimer`: ``phase(label)`` returning a context manager)
    and times module forwards through :meth:`hook`. Labels may nest (``retrieval`` inside
    ``sop_sets``); each label sums its own time, and :func:`~sop_plugin.perf.breakdown.split_step`
    subtracts the nested ones. On CUDA every boundary synchronises.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    def now(self) -> float:
        """``time.perf_counter()`` once the device's queued work is done."""
        sync(self.device)
        return time.perf_counter()

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        """Add the seconds of the ``with`` block to ``label``'s total."""
        start = self.now()
        try:
            yield
        finally:
            self.totals[label] += self.now() - start

    def hook(self, module: nn.Module, label: str) -> list[Any]:
        """Time every forward of ``module`` under ``label``; returns the hook handles."""
        starts: list[float] = []

        def pre(*_: Any) -> None:
            starts.append(self.now())

        def post(*_: Any) -> None:
            self.totals[label] += self.now() - starts.pop()

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def pop(self) -> dict[str, float]:
        """This step's totals, then start afresh."""
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run in a worker thread, as the timed trainers run; re-raises its error.

    (On a loaded machine the main thread's OpenMP team was seen to stall on small ops for a
    time slice each; every measurement of sop-perf runs off the main thread alike.)
    """
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    th = threading.Thread(target=target, name=f"perf-{getattr(fn, '__name__', 'work')}")
    th.start()
    th.join()
    if errors:
        raise errors[0]
    return out[0]
