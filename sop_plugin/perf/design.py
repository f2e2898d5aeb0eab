"""The design part of ``sop-perf``: how to search a memory that changes every step (CPU).

SOP's memory is rewritten at every step, so an index built for one step is stale at the next: the
variants timed here are searching the live memory without an index against rebuilding a faiss index
every step, and excluding a set's own anchors by masking against over-fetching ``k + E`` neighbours
and filtering. The shape is SOP's class level: T sets of P anchors, k SEs each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sop_plugin.core.retrieval import get_retrieval, search_sets
from sop_plugin.perf.retrieval import clustered_memory
from sop_plugin.perf.timing import median_seconds

#: a search without exclusion: ``knn(queries [Q, d], pool [N, d], n) -> (sims [Q, n], indices [Q, n])``
Knn = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


def overfetch(knn: Knn, queries: Tensor, pool: Tensor, k: int, exclude: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusion by over-fetching: ``knn``'s top ``k + E`` per query, then the first k not in ``exclude``.

    queries [T, P, d], exclude [T, E] (set t's rows excluded from set t only) -> ([T, P, k], [T, P, k]).
    At most E of the ``k + E`` are excluded, so the result is exact.
    """
    t, p, d = queries.shape
    n = k + exclude.shape[1]
    sims, idx = (x.view(t, p, n) for x in knn(queries.reshape(t * p, d), pool, n))
    dropped = torch.stack([torch.isin(idx[s], exclude[s]) for s in range(t)])
    first = torch.argsort(dropped.to(torch.uint8), dim=-1, stable=True)[..., :k]
    return sims.gather(-1, first), idx.gather(-1, first)


def design_choices(
    memory: int = 65536, sets: int = 4, anchors: int = 64, k: int = 8, repeats: int = 3, dim: int = 256
) -> list[dict[str, Any]]:
    """Median seconds of each variant (module docstring), ``[{variant, memory, sets, anchors, k, median_s}]``.

    The memory holds ``memory`` rows of ``dim``; ``sets`` sets of ``anchors`` anchor rows search it for
    ``k`` neighbours each, every call after one untimed warm-up call.
    """
    import faiss

    device = torch.device("cpu")
    pool = clustered_memory(memory, dim, seed=7)
    gen = torch.Generator().manual_seed(8)
    idx = torch.stack([torch.randperm(memory, generator=gen)[:anchors] for _ in range(sets)])
    q = pool[idx]
    torch_b, faiss_b = get_retrieval("torch"), get_retrieval("faiss")

    def faiss_rebuild_overfetch() -> object:
        def knn(qq: Tensor, x: Tensor, kk: int) -> tuple[Tensor, Tensor]:
            index = faiss.IndexFlatIP(dim)
            index.add(x.numpy())
            s, i = index.search(qq.numpy(), kk)
            return torch.from_numpy(s), torch.from_numpy(i)

        return overfetch(knn, q, pool, k, idx)

    def faiss_rebuild_selector() -> object:
        index = faiss.IndexFlatIP(dim)
        index.add(pool.numpy())
        for t in range(sets):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(idx[t].numpy().astype(np.int64)))
            index.search(q[t].numpy(), k, params=faiss.SearchParameters(sel=sel))
        return None

    def torch_masked() -> object:
        return search_sets(torch_b, q, pool, k, idx)

    def torch_overfetch() -> object:
        return overfetch(torch_b.search, q, pool, k, idx)

    def torch_per_set() -> object:
        return [torch_b.search(q[t], pool, k, exclude=idx[t]) for t in range(sets)]

    def faiss_live() -> object:
        return search_sets(faiss_b, q, pool, k, idx)

    variants: list[tuple[str, Callable[[], object]]] = [
        ("torch: one search for all sets, anchors masked per set", torch_masked),
        ("torch: one search for all sets, over-fetch k+P and filter", torch_overfetch),
        ("torch: one search per set, anchors masked", torch_per_set),
        ("faiss: faiss.knn on the live memory (no index), over-fetch", faiss_live),
        ("faiss: rebuild IndexFlatIP every step, over-fetch", faiss_rebuild_overfetch),
        ("faiss: rebuild IndexFlatIP every step, IDSelector exclusion per set", faiss_rebuild_selector),
    ]
    shape = {"memory": memory, "sets": sets, "anchors": anchors, "k": k}
    out = []
    for name, fn in variants:
        fn()  # warm-up
        out.append({"variant": name, **shape, "median_s": median_seconds(fn, repeats, device)})
    return out
