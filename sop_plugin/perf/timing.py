"""Clocks of ``sop-perf``: device-synchronised seconds, a per-label phase timer, worker threads."""

from __future__ import annotations

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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        sync(self.device)
        return time.perf_counter()

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
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
