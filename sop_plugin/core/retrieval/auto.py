"""``auto``: the exact backend measured fastest for each search shape on this device.

Speed depends on the machine and the shape, so the first search of each shape times every exact
backend on the real arguments and keeps the fastest; only exact backends compete, so the choice
never changes the neighbours (ties aside). docs/performance.md, "Retrieval backends", has the rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

from sop_plugin.core.distributed import rank_and_world
from sop_plugin.core.retrieval.registry import (
    RETRIEVAL_BACKENDS,
    Hits,
    Retrieval,
    SetSearch,
    get_retrieval,
    is_available,
    register_retrieval,
)

log = logging.getLogger("sop_plugin.retrieval")

#: (memory rows, sets, queries per set, k, dim, device type): what one measurement is valid for
ShapeKey = tuple[int, int, int, int, int, str]
_CHOICE_LOG = "retrieval=auto: memory %d, %d set(s) x %d queries, k=%d, dim %d on %s -> %s (%s)"


def exact_candidates(device: torch.device | str) -> list[str]:
    """Registered exact backends (``auto`` aside) that run natively on ``device``."""
    exact = [n for n in sorted(RETRIEVAL_BACKENDS) if getattr(RETRIEVAL_BACKENDS.get(n), "exact", False)]
    return [n for n in exact if n != "auto" and is_available(n, device)]


@register_retrieval("auto")
class AutoRetrieval(SetSearch):
    """Exact search through the backend measured fastest for each search shape; ``table`` holds the
    seconds per search of every candidate and ``choice`` the backend used, per measured shape.

    Args:
        candidates: backends allowed to compete (None: :func:`exact_candidates` of the device).
        repeats: timed calls per candidate after one warm-up call (fewer once ``budget_s`` is spent).
        budget_s: seconds of timing per candidate and shape before it stops repeating.
    """

    name = "auto"
    exact = True

    def __init__(self, candidates: list[str] | None = None, repeats: int = 3, budget_s: float = 0.5) -> None:
        self.candidates = candidates
        self.repeats, self.budget_s = max(1, repeats), budget_s
        self.table: dict[ShapeKey, dict[str, float]] = {}
        self.choice: dict[ShapeKey, str] = {}
        self._backends: dict[str, Retrieval] = {}
        self._lockstep = False

    @staticmethod
    def key(pool: Tensor, queries: Tensor, k: int) -> ShapeKey:
        """The shape key of a search of queries [T, P, d] in ``pool``."""
        return (pool.shape[0], queries.shape[0], queries.shape[1], k, pool.shape[1], pool.device.type)

    def _search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> Hits:
        key = self.key(pool, queries, k)
        if key not in self.choice:
            self._measure(key, queries, pool, k, exclude)
        return self._backend(self.choice[key]).search_sets(queries, pool, k, exclude)

    def _measure(self, key: ShapeKey, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> None:
        names = self.candidates or exact_candidates(pool.device)
        times = {name: self._time(self._backend(name), queries, pool, k, exclude) for name in names}
        best = min(times, key=times.__getitem__)
        if self._lockstep and rank_and_world()[1] > 1:
            box = [best]  # rank 0's pick everywhere: backends agree only up to ties
            dist.broadcast_object_list(box, src=0)
            best = str(box[0])
        self.table[key], self.choice[key] = times, best
        for name in set(self._backends) - set(self.choice.values()):  # free the losers' buffers
            del self._backends[name]
        measured = ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in sorted(times.items(), key=lambda kv: kv[1]))
        log.info(_CHOICE_LOG, *key, best, measured)

    def _time(self, impl: Retrieval, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> float:
        """Seconds per search: the best of up to ``repeats`` calls after a warm-up call (the least
        noisy estimate on a shared machine); timing stops once ``budget_s`` is spent on one backend."""
        runs: list[float] = []
        while len(runs) < 1 + self.repeats and (len(runs) < 2 or sum(runs) < self.budget_s):
            if pool.is_cuda:
                torch.cuda.synchronize(pool.device)
            start = time.perf_counter()
            impl.search_sets(queries, pool, k, exclude)
            if pool.is_cuda:
                torch.cuda.synchronize(pool.device)
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
    """Searches inside are made by every DDP rank alike (a training step's SOP sets), so an ``auto``
    backend measuring there adopts rank 0's choice (a collective); elsewhere, e.g. in rank-0-only
    evaluation code, it must not communicate."""
    if not isinstance(retrieval, AutoRetrieval):
        yield
        return
    old, retrieval._lockstep = retrieval._lockstep, True
    try:
        yield
    finally:
        retrieval._lockstep = old
