"""The retrieval interface and its registry (imports no backend).

``search(queries [P, d], pool [N, d], k, exclude=None) -> (similarities [P, k], indices [P, k])`` ranks
``pool`` rows by inner product with each (unit) query, best first; ``exclude`` (pool row indices) keeps
anchors out of their own support set without copying the memory. ``search_sets`` answers the T SOP sets
of a step at once (queries [T, P, d], exclude [T, E]: set t's rows excluded from set t only). Backends
register themselves when ``sop_plugin.core.retrieval`` imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor


class Retrieval(Protocol):
    """Anything that answers exact top-k inner-product search (see the module docstring)."""

    name: str

    def search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]: ...


RETRIEVAL_BACKENDS: dict[str, Callable[..., Retrieval]] = {}


def register_retrieval(name: str) -> Callable[[Callable[..., Retrieval]], Callable[..., Retrieval]]:
    """Class decorator adding a backend factory to :data:`RETRIEVAL_BACKENDS`."""

    def deco(factory: Callable[..., Retrieval]) -> Callable[..., Retrieval]:
        RETRIEVAL_BACKENDS[name] = factory
        return factory

    return deco


def get_retrieval(name: str = "torch", **kwargs: object) -> Retrieval:
    """Build the retrieval backend ``name`` (see :data:`RETRIEVAL_BACKENDS`)."""
    if name not in RETRIEVAL_BACKENDS:
        raise ValueError(
            f"unknown retrieval backend {name!r} (setting `retrieval`); choose one of {sorted(RETRIEVAL_BACKENDS)}"
        )
    return RETRIEVAL_BACKENDS[name](**kwargs)


def is_available(backend: str, device: torch.device | str) -> bool:
    """Whether ``backend`` can run natively on ``device`` (no host copies on GPU)."""
    check = getattr(RETRIEVAL_BACKENDS[backend], "available", None)
    return True if check is None else bool(check(torch.device(device)))


def check_search_args(queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> None:
    """Raise a clear error when T sets of queries [T, P, d] cannot get k neighbours each."""
    if queries.ndim != 3 or pool.ndim != 2 or queries.shape[2] != pool.shape[1]:
        raise ValueError(
            f"search expects queries [T, P, d] (or [P, d]) and pool [N, d], got "
            f"{tuple(queries.shape)} and {tuple(pool.shape)}"
        )
    if exclude is not None and (exclude.ndim != 2 or exclude.shape[0] != queries.shape[0]):
        raise ValueError(f"exclude must be [T={queries.shape[0]}, E], got {tuple(exclude.shape)}")
    excluded = [0] if exclude is None else [int(torch.unique(row).numel()) for row in exclude]
    available = pool.shape[0] - max(excluded)
    if k < 0 or k > available:
        raise ValueError(
            f"cannot retrieve k={k} support embeddings from a candidate pool of {available} rows "
            f"(memory {pool.shape[0]} minus {max(excluded)} anchors): lower the number of supports "
            f"or anchors, or enlarge the memory"
        )


def empty_result(queries: Tensor) -> tuple[Tensor, Tensor]:
    """The answer to a k = 0 search (any leading shape)."""
    lead = queries.shape[:-1]
    idx = torch.zeros((*lead, 0), dtype=torch.long, device=queries.device)
    return queries.new_zeros((*lead, 0)), idx


def search_sets(
    retrieval: Retrieval, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Search T sets at once: queries [T, P, d], exclude [T, E] -> ([T, P, k], [T, P, k])."""
    return retrieval.search_sets(queries, pool, k, exclude)


class SetSearch:
    """Base of every backend: checks the arguments once, answers k = 0, and makes ``search`` the
    one-set case of ``search_sets``; a backend implements :meth:`_search` for T >= 1 sets, k >= 1."""

    def _search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries [T, P, d], exclude [T, E] (set t's rows excluded from set t only) -> ([T, P, k], [T, P, k])."""
        check_search_args(queries, pool, k, exclude)
        return empty_result(queries) if k == 0 else self._search(queries, pool, k, exclude)

    def search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """queries [P, d], exclude [E] -> ([P, k], [P, k])."""
        if queries.ndim != 2:
            raise ValueError(f"search expects queries [P, d], got {tuple(queries.shape)}")
        sims, idx = self.search_sets(queries[None], pool, k, None if exclude is None else exclude.reshape(1, -1))
        return sims[0], idx[0]


@contextmanager
def exact_matmul(device: torch.device) -> Iterator[None]:
    """Full-precision fp32 matmuls, autocast off, whatever the host enabled (TF32, bf16 autocast).

    A training script may allow TF32 or run under bf16 autocast; exact ranking must not inherit it.
    """
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)
