"""``faiss``: exact flat inner-product search (CPU, or faiss' GPU brute force with faiss-gpu)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sop_plugin.core.retrieval.registry import Hits, SetSearch, register_retrieval


@functools.lru_cache(maxsize=1)
def faiss_gpu_available() -> bool:
    """faiss was built with GPU support and sees a CUDA device."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@functools.lru_cache(maxsize=1)
def _gpu_resources() -> object:
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401  (torch tensors in and out of faiss.knn_gpu)

    return faiss.StandardGpuResources()


def _available(device: torch.device) -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return device.type == "cpu" or (device.type == "cuda" and faiss_gpu_available())


def _excluded(idx: Tensor, exclude: Tensor) -> Tensor:
    """Bool like ``idx`` [T, P, F]: True where ``idx[t]`` is one of the rows ``exclude[t]`` [T, E]."""
    t = idx.shape[0]
    ex = exclude.to(idx.device).sort(dim=1).values
    flat = idx.reshape(t, -1).contiguous()
    pos = torch.searchsorted(ex, flat).clamp_max(ex.shape[1] - 1)
    return (ex.gather(1, pos) == flat).view(idx.shape)


@register_retrieval("faiss")
class FaissFlatRetrieval(SetSearch):
    """Exact flat inner-product search with faiss, without keeping an index (``faiss.knn`` on the
    live memory; ``faiss.knn_gpu`` on CUDA tensors with faiss-gpu). Excluded rows are dropped by
    over-fetching ``k + E`` neighbours: at most E of a query's top ``k + E`` are excluded, so the
    first k kept ones are its exact top k among the allowed rows. faiss-gpu limits k + E to 2048.
    """

    name = "faiss"
    exact = True
    available = staticmethod(_available)

    def __init__(self) -> None:
        try:
            import faiss  # noqa: F401
        except ImportError as err:  # pragma: no cover - faiss is a base dependency
            raise ImportError("retrieval='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu)") from err

    def _search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> Hits:
        t, p, d = queries.shape
        extra = 0 if exclude is None else exclude.shape[1]
        fetch = min(k + extra, pool.shape[0])
        sims, idx = self._knn(queries.reshape(t * p, d), pool, fetch)
        sims, idx = sims.view(t, p, fetch), idx.view(t, p, fetch)
        if not extra:
            return sims[..., :k], idx[..., :k]
        keep = ~_excluded(idx, exclude) & (idx >= 0)  # type: ignore[arg-type]
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :k]
        return sims.gather(-1, order), idx.gather(-1, order)

    @staticmethod
    def _knn(queries: Tensor, pool: Tensor, k: int) -> Hits:
        """Unfiltered top-k on the pool's device (host for CPU tensors or without faiss-gpu)."""
        import faiss

        if pool.is_cuda and faiss_gpu_available():
            q, x = queries.detach().float().contiguous(), pool.detach().float().contiguous()
            return faiss.knn_gpu(
                _gpu_resources(), q, x, k, metric=faiss.METRIC_INNER_PRODUCT, device=pool.device.index or 0
            )
        q_np = queries.detach().float().cpu().contiguous().numpy()
        x_np = pool.detach().float().cpu().contiguous().numpy()
        sims, idx = faiss.knn(q_np, x_np, k, metric=faiss.METRIC_INNER_PRODUCT)
        out_s = torch.from_numpy(sims).to(device=queries.device, dtype=queries.dtype)
        return out_s, torch.from_numpy(idx).to(device=queries.device, dtype=torch.long)
