"""``auto``: use whichever exact backend is fastest for this search shape on this device.

Speed depends on the machine (BLAS, cores, GPU, whether faiss-gpu is installed) and on the
shape, so ``auto`` measures instead of guessing. The first search of each shape
(memory rows, sets, queries per set, k, dim, device) runs every exact backend available
natively on that device on the real arguments (a warm-up call, then the median of
``repeats`` timed calls), keeps the fastest for all later searches of that shape and logs
the choice once. Pass ``memory_size`` (and ``queries``, ``k``, ``dim``, ``sets``,
``device``) to calibrate at construction on random unit vectors instead.

The memory a step searches changes as training goes (random rows at first, then clustered
embeddings), and so does which backend is fastest (``torch-bf16`` certifies a clustered memory
with a short shortlist but falls back to fp32 on near-duplicates). So searches made in
:func:`lockstep` re-measure their shape at fixed call counts (``recalibrate_at``, default the
100th, 1,000th and 10,000th call): the same calls on every DDP rank, whose choice rank 0 makes.

Only exact backends compete, so the choice never changes the neighbours (ties aside). Inside
:func:`lockstep` (a training step's SOP sets, made by every DDP rank alike) every rank adopts
rank 0's choice, so the SOP sets stay identical across ranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from sop_plugin.core.retrieval import (
    RETRIEVAL_BACKENDS,
    Retrieval,
    SetSearch,
    get_retrieval,
    is_available,
    is_exact,
    register_retrieval,
    search_sets,
)

log = logging.getLogger("sop_plugin.retrieval")


class ShapeKey(NamedTuple):
    """What a calibration is valid for."""

    memory: int
    sets: int
    queries: int
    k: int
    dim: int
    device: str


def exact_candidates(device: torch.device | str) -> list[str]:
    """Registered exact backends (``auto`` aside) that run natively on ``device``."""
    return [n for n in sorted(RETRIEVAL_BACKENDS) if n != "auto" and is_exact(n) and is_available(n, device)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _same_on_every_rank(choice: str) -> str:
    """Rank 0's pick on every DDP rank: backends agree only up to ties, SOP sets must not differ.

    Only called inside :func:`lockstep`, where every rank makes the same search.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])
    return choice


@register_retrieval("auto")
class AutoRetrieval(SetSearch):
    """Exact search through the backend measured fastest for each search shape.

    Args:
        candidates: backends allowed to compete (None: :func:`exact_candidates` of the device).
        repeats: timed calls per candidate after one warm-up call (fewer once ``budget_s`` is spent).
        budget_s: seconds of timing per candidate and shape before it stops repeating.
        memory_size, queries, k, dim, sets, device: calibrate for this shape at construction.
        recalibrate_at: counts of :func:`lockstep` calls of a shape at which it is measured again.

    Attributes:
        table: seconds per search of every candidate, per calibrated shape.
        choice: the backend used, per calibrated shape.
    """

    name = "auto"
    exact = True

    def __init__(self, candidates: list[str] | None = None, repeats: int = 3, budget_s: float = 0.5,
                 memory_size: int | None = None,
                 queries: int = 256, k: int = 8, dim: int = 256, sets: int = 1,
                 device: torch.device | str = "cpu",
                 recalibrate_at: tuple[int, ...] = (100, 1_000, 10_000)) -> None:
        self.candidates = candidates
        self.recalibrate_at = frozenset(recalibrate_at)
        self.calls: dict[ShapeKey, int] = {}  # lockstep calls per shape
        self.repeats, self.budget_s = max(1, repeats), budget_s
        self.table: dict[ShapeKey, dict[str, float]] = {}
        self.choice: dict[ShapeKey, str] = {}
        self._backends: dict[str, Retrieval] = {}
        self._lockstep = False
        if memory_size is not None:
            self.calibrate(memory_size, queries, k, dim=dim, sets=sets, device=device)

    # ------------------------------------------------------------------ search
    @torch.no_grad()
    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries [T, P, d], exclude [T, E] (set-wise) -> ([T, P, k], [T, P, k])."""
        key = self.key(pool, queries, k)
        if self._lockstep:  # every DDP rank makes these calls alike, so counts agree across ranks
            self.calls[key] = self.calls.get(key, 0) + 1
        if key not in self.choice or (self._lockstep and self.calls[key] in self.recalibrate_at):
            self._measure(key, queries, pool, k, exclude)
        return search_sets(self._backend(self.choice[key]), queries, pool, k, exclude)

    # ------------------------------------------------------------------ calibration
    @staticmethod
    def key(pool: Tensor, queries: Tensor, k: int) -> ShapeKey:
        t, p, d = queries.shape
        return ShapeKey(pool.shape[0], t, p, k, d, pool.device.type)

    def calibrate(self, memory_size: int, queries: int = 256, k: int = 8, dim: int = 256, sets: int = 1,
                  device: torch.device | str = "cpu", seed: int = 0) -> str:
        """Measure the candidates on random unit vectors of this shape; returns the choice."""
        device = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        pool = torch.nn.functional.normalize(torch.randn(memory_size, dim, generator=gen), dim=1).to(device)
        anchors = torch.stack([torch.randperm(memory_size, generator=gen)[:queries] for _ in range(sets)])
        anchors = anchors.to(device)
        key = self.key(pool, pool[anchors], k)
        if key not in self.choice:
            self._measure(key, pool[anchors], pool, k, anchors)
        return self.choice[key]

    def _measure(self, key: ShapeKey, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> None:
        names = self.candidates or exact_candidates(pool.device)
        times = {name: self._time(self._backend(name), queries, pool, k, exclude) for name in names}
        best = min(times, key=times.__getitem__)
        if self._lockstep:
            best = _same_on_every_rank(best)
        self.table[key], self.choice[key] = times, best
        for name in set(self._backends) - set(self.choice.values()):  # free the losers' buffers
            del self._backends[name]
        measured = ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in sorted(times.items(), key=lambda kv: kv[1]))
        again = f" (re-measured at call {self.calls[key]})" if self.calls.get(key, 0) > 1 else ""
        log.info("retrieval=auto%s: memory %d x %d, %d set(s) x %d queries, k=%d on %s -> %s (%s)",
                 again, key.memory, key.dim, key.sets, key.queries, key.k, key.device, best, measured)

    def _time(self, backend: Retrieval, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> float:
        """Seconds per search: the best of up to ``repeats`` calls after a warm-up (lazy init, caches).

        Slow candidates get fewer calls: timing stops once ``budget_s`` is spent on one backend.
        The minimum is the least noisy estimate on a shared machine.
        """
        runs: list[float] = []
        while len(runs) < 1 + self.repeats and (len(runs) < 2 or sum(runs) < self.budget_s):
            _sync(pool.device)
            start = time.perf_counter()
            search_sets(backend, queries, pool, k, exclude)
            _sync(pool.device)
            runs.append(time.perf_counter() - start)
            if runs[0] > self.budget_s:  # one call already exceeds the budget: it is the estimate
                break
        return min(runs[1:]) if len(runs) > 1 else runs[0]

    def _backend(self, name: str) -> Retrieval:
        if name not in self._backends:
            self._backends[name] = get_retrieval(name)
        return self._backends[name]


@contextmanager
def lockstep(retrieval: Retrieval) -> Iterator[None]:
    """Searches inside are made by every DDP rank alike (a training step's SOP sets), so an
    ``auto`` backend calibrating there adopts rank 0's choice (a collective); elsewhere, e.g. in
    rank-0-only evaluation code, it must not communicate."""
    if not isinstance(retrieval, AutoRetrieval):
        yield
        return
    old, retrieval._lockstep = retrieval._lockstep, True
    try:
        yield
    finally:
        retrieval._lockstep = old
