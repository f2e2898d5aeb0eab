"""The retrieval interface and its registry (imports no backend; docs/performance.md).

``search(queries [P, d], pool [N, d], k, exclude=None) -> (similarities [P, k], indices [P, k])``
ranks ``pool`` rows by inner product with each (unit) query, best first; ``exclude`` (pool row
indices) keeps anchors out of their own support set. ``search_sets`` answers T sets at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from sop_plugin.registry import Registry

#: (similarities, indices) of a search, both [..., k], best first
Hits = tuple[Tensor, Tensor]


class Retrieval(Protocol):
    """Anything that answers exact top-k inner-product search (see the module docstring)."""

    name: str

    def search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> Hits: ...

    def search_sets(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> Hits: ...


#: name -> backend factory (a class), filled by the backends themselves
RETRIEVAL_BACKENDS: Registry[Callable[..., Retrieval]] = Registry("retrieval backend")
register_retrieval = RETRIEVAL_BACKENDS.register


def get_retrieval(name: str = "torch", **kwargs: object) -> Retrieval:
    """Build the retrieval backend ``name`` (setting ``retrieval``) with ``kwargs``."""
    return RETRIEVAL_BACKENDS.get(name)(**kwargs)


def is_available(backend: str, device: torch.device | str) -> bool:
    """Whether ``backend`` can run natively on ``device`` (no host copies on GPU)."""
    check = getattr(RETRIEVAL_BACKENDS.get(backend), "available", None)
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


def search_sets(retrieval: Retrieval, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> Hits:
    """Search T sets at once: queries [T, P, d], exclude [T, E] -> ([T, P, k], [T, P, k])."""
    return retrieval.search_sets(queries, pool, k, exclude)


class SetSearch:
    """Base of every backend: checks the arguments once, answers k = 0, and makes ``search`` the
    one-set case of ``search_sets``; a backend implements :meth:`_search` for T >= 1 sets, k >= 1."""

    def _search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> Hits:
        raise NotImplementedError

    @torch.no_grad()
    def search_sets(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> Hits:
        """queries [T, P, d], exclude [T, E] (set t's rows excluded from set t only) -> Hits [T, P, k]."""
        check_search_args(queries, pool, k, exclude)
        if k > 0:
            return self._search(queries, pool, k, exclude)
        empty = torch.zeros((*queries.shape[:-1], 0), dtype=torch.long, device=queries.device)
        return queries.new_zeros(empty.shape), empty

    def search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> Hits:
        """queries [P, d], exclude [E] -> Hits [P, k]."""
        if queries.ndim != 2:
            raise ValueError(f"search expects queries [P, d], got {tuple(queries.shape)}")
        sets_exclude = None if exclude is None else exclude.reshape(1, -1)
        sims, idx = self.search_sets(queries[None], pool, k, sets_exclude)
        return sims[0], idx[0]
