"""Exact cosine k-NN search of support embeddings, behind one interface.

``search(queries [P, d], pool [N, d], k, exclude=None) -> (similarities [P, k], indices [P, k])``
ranks ``pool`` rows by inner product with each (unit) query, best first. ``exclude``
(a 1-D tensor of pool row indices) removes rows from every query's candidates, which
is how anchors are kept out of their own support set without copying the memory.

Backends register themselves in ``RETRIEVAL_BACKENDS``; :func:`get_retrieval` builds one by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor


class Retrieval(Protocol):
    """Anything that answers exact (or, if documented, approximate) top-k inner-product search."""

    name: str

    def search(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]: ...


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
            f"unknown retrieval backend {name!r} (setting `retrieval`); "
            f"choose one of {sorted(RETRIEVAL_BACKENDS)}"
        )
    return RETRIEVAL_BACKENDS[name](**kwargs)


def check_search_args(queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> None:
    """Raise a clear error when a search cannot return k neighbours per query."""
    if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(
            f"search expects queries [P, d] and pool [N, d], got {tuple(queries.shape)} and {tuple(pool.shape)}"
        )
    n_excluded = 0 if exclude is None else int(torch.unique(exclude).numel())
    available = pool.shape[0] - n_excluded
    if k < 0 or k > available:
        raise ValueError(
            f"cannot retrieve k={k} support embeddings from a candidate pool of {available} rows "
            f"(memory {pool.shape[0]} minus {n_excluded} anchors): lower the number of supports "
            f"or anchors, or enlarge the memory"
        )


def empty_result(queries: Tensor) -> tuple[Tensor, Tensor]:
    """The answer to a k = 0 search."""
    p = queries.shape[0]
    return (
        queries.new_zeros((p, 0)),
        torch.zeros((p, 0), dtype=torch.long, device=queries.device),
    )


@register_retrieval("torch")
class TorchRetrieval:
    """Exact search by matmul + topk, in row chunks of the pool so memory stays bounded.

    Args:
        chunk_rows: pool rows scored at once; bounds the [P, chunk] score block.
    """

    name = "torch"

    def __init__(self, chunk_rows: int = 262_144) -> None:
        self.chunk_rows = chunk_rows

    @torch.no_grad()
    def search(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        check_search_args(queries, pool, k, exclude)
        if k == 0:
            return empty_result(queries)
        queries = queries.to(pool.dtype)
        best_s: Tensor | None = None
        best_i: Tensor | None = None
        for start in range(0, pool.shape[0], self.chunk_rows):
            block = pool[start : start + self.chunk_rows]
            scores = queries @ block.T
            if exclude is not None:
                local = exclude - start
                local = local[(local >= 0) & (local < block.shape[0])]
                scores[:, local] = float("-inf")
            kk = min(k, block.shape[0])
            s, i = scores.topk(kk, dim=1)
            i = i + start
            if best_s is None:
                best_s, best_i = s, i
            else:
                cat_s = torch.cat([best_s, s], dim=1)
                cat_i = torch.cat([best_i, i], dim=1)
                best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
                best_i = cat_i.gather(1, pos)
        assert best_s is not None and best_i is not None
        return best_s, best_i


@register_retrieval("faiss")
class FaissFlatRetrieval:
    """Exact search with a faiss flat inner-product index (CPU), rebuilt per call.

    Anchors are excluded by over-fetching ``k + len(exclude)`` neighbours and
    filtering, which stays exact.
    """

    name = "faiss"

    def __init__(self) -> None:
        try:
            import faiss  # noqa: F401
        except ImportError as err:  # pragma: no cover - faiss is a base dependency
            raise ImportError(
                "retrieval='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu)"
            ) from err

    @torch.no_grad()
    def search(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        import faiss

        check_search_args(queries, pool, k, exclude)
        if k == 0:
            return empty_result(queries)
        device = queries.device
        pool_np = pool.detach().float().cpu().contiguous().numpy()
        q_np = queries.detach().float().cpu().contiguous().numpy()
        index = faiss.IndexFlatIP(pool_np.shape[1])
        index.add(pool_np)
        extra = 0 if exclude is None else int(exclude.numel())
        fetch = min(k + extra, pool_np.shape[0])
        sims, idx = index.search(q_np, fetch)
        sims_t = torch.from_numpy(sims)
        idx_t = torch.from_numpy(idx).long()
        if extra:
            banned = torch.zeros(pool_np.shape[0], dtype=torch.bool)
            banned[exclude.cpu()] = True
            keep = ~banned[idx_t.clamp_min(0)] & (idx_t >= 0)
            # stable selection of the first k kept columns of each row
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
            sims_t = sims_t.gather(1, order)
            idx_t = idx_t.gather(1, order)
        else:
            sims_t, idx_t = sims_t[:, :k], idx_t[:, :k]
        return sims_t.to(device=device, dtype=queries.dtype), idx_t.to(device)
