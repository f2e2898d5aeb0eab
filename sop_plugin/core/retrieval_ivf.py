"""``faiss-ivf``: approximate search for memories of millions of rows (faiss IVF-Flat).

An inverted-file index only pays off if it is kept across steps: rebuilding it assigns
every memory row to a centroid, which costs as much as a flat search. So the index is
cached per memory tensor and, before each search, only the rows that changed since the
previous call are re-added; they are found by comparing two fixed random projections of
every row (one O(N d) pass, a fraction of a flat search with hundreds of queries). The
coarse quantiser is trained by k-means on a sample of the memory, and again after the
memory has been fully overwritten since the last training (SOP's FIFO memory starts as
random vectors).

CPU only (CUDA tensors are copied to the host). Approximate: recall@k against exact search depends on ``nprobe`` and on how clustered the
memory is; ``sop-perf`` reports it. ``auto`` never picks this backend.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sop_plugin.core.retrieval import (
    FaissFlatRetrieval,
    SetSearch,
    _faiss_available,
    overfetch_sets,
    register_retrieval,
)


def default_nlist(num_rows: int) -> int:
    """A power of two near sqrt(N), at least 1 (1024 lists for a 1M-row memory)."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(num_rows)))))


@register_retrieval("faiss-ivf")
class FaissIVFRetrieval(SetSearch):
    """Approximate IVF-Flat inner-product search with an index kept and updated across calls.

    Args:
        nlist: inverted lists (None: :func:`default_nlist` of the memory size).
        nprobe: lists visited per query (None: ``max(8, nlist // 16)``).
        train_rows: memory rows sampled to train the quantiser (None: ``64 * nlist``).
        seed: seed of the training sample and of the change-detection projections.
    """

    name = "faiss-ivf"
    exact = False
    available = staticmethod(lambda device: device.type == "cpu" and _faiss_available(device))

    def __init__(self, nlist: int | None = None, nprobe: int | None = None,
                 train_rows: int | None = None, seed: int = 0) -> None:
        import faiss  # noqa: F401  (fail early when faiss is missing)

        self.nlist, self.nprobe, self.train_rows, self.seed = nlist, nprobe, train_rows, seed
        self._index: object | None = None
        self._key: tuple[object, ...] | None = None
        self._fingerprint: np.ndarray | None = None
        self._changed_since_training = 0
        #: rows re-added by the last call (for tests and sop-perf)
        self.last_update_rows = 0

    @torch.no_grad()
    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries [T, P, d], exclude [T, E] (set-wise) -> ([T, P, k], [T, P, k])."""
        self.sync(pool)
        sims, idx = overfetch_sets(self._knn, queries, pool, k, exclude)
        if bool((idx < 0).any()):  # the probed lists held fewer than k allowed rows: answer exactly
            sims, idx = overfetch_sets(FaissFlatRetrieval._knn, queries, pool, k, exclude)
        return sims, idx

    # ------------------------------------------------------------------ index upkeep
    def sync(self, pool: Tensor) -> None:
        """Bring the cached index up to date with ``pool`` (build, retrain or re-add changed rows)."""
        x = pool.detach().float().cpu().contiguous().numpy()
        key = (pool.data_ptr(), tuple(pool.shape), str(pool.device))
        fingerprint = x @ self._projection(x.shape[1])
        if self._index is None or key != self._key:
            self._build(x)
        else:
            assert self._fingerprint is not None
            changed = np.nonzero((fingerprint != self._fingerprint).any(axis=1))[0].astype("int64")
            self._changed_since_training += changed.size
            if self._changed_since_training >= x.shape[0]:
                self._build(x)
            elif changed.size:
                self._index.remove_ids(changed)  # type: ignore[attr-defined]
                self._index.add_with_ids(x[changed], changed)  # type: ignore[attr-defined]
                self.last_update_rows = int(changed.size)
            else:
                self.last_update_rows = 0
        self._key, self._fingerprint = key, fingerprint

    def _projection(self, dim: int) -> np.ndarray:
        gen = np.random.default_rng(self.seed + 1)
        return gen.standard_normal((dim, 2)).astype("float32")

    def _build(self, x: np.ndarray) -> None:
        import faiss

        n, d = x.shape
        nlist = min(self.nlist or default_nlist(n), n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rows = min(n, self.train_rows or 64 * nlist)
        sample = np.random.default_rng(self.seed).choice(n, size=rows, replace=False)
        index.train(np.ascontiguousarray(x[np.sort(sample)]))
        index.add_with_ids(x, np.arange(n, dtype="int64"))
        index.nprobe = min(nlist, self.nprobe or max(8, nlist // 16))
        self._index, self._quantizer = index, quantizer  # keep the quantiser alive
        self._changed_since_training = 0
        self.last_update_rows = n

    def _knn(self, queries: Tensor, pool: Tensor, k: int) -> tuple[Tensor, Tensor]:
        q = queries.detach().float().cpu().contiguous().numpy()
        sims, idx = self._index.search(q, k)  # type: ignore[attr-defined]
        out_s = torch.from_numpy(sims).to(device=queries.device, dtype=queries.dtype)
        return out_s, torch.from_numpy(idx).to(device=queries.device, dtype=torch.long)
