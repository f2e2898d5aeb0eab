"""Cosine k-NN search of support embeddings, behind one interface.

``search(queries [P, d], pool [N, d], k, exclude=None) -> (similarities [P, k], indices [P, k])``
ranks ``pool`` rows by inner product with each (unit) query, best first. ``exclude``
(a 1-D tensor of pool row indices) removes rows from every query's candidates, which
is how anchors are kept out of their own support set without copying the memory.

:func:`search_sets` answers T SOP sets at once (queries [T, P, d], exclude [T, E]: set
t's rows are excluded from set t's candidates only) with one search instead of T.

Backends register themselves in ``RETRIEVAL_BACKENDS``; :func:`get_retrieval` builds one
by name: ``torch`` (exact, chunked matmul + topk, CPU or GPU), ``torch-bf16`` (exact: a
bf16 scan for a certified shortlist re-ranked in fp32; see ``retrieval_bf16``), ``faiss``
(exact flat inner product on CPU, or faiss' GPU brute force on CUDA tensors when
faiss-gpu is installed), ``faiss-ivf`` (approximate, for memories of millions; see
``retrieval_ivf``) and ``auto`` (picks the fastest exact backend by a one-off
measurement; see ``retrieval_auto``).

How a memory that changes every step is searched (measured by ``sop-perf``, see
docs/performance.md): no index is kept for exact search. ``torch`` scores the live
memory tensor, ``faiss`` runs ``faiss.knn`` on a zero-copy view of it (building an
``IndexFlatIP`` each step only adds a copy of the memory). Anchors are excluded by
masking their scores in ``torch`` and by over-fetching ``k + E`` neighbours and
filtering in ``faiss``; both stay exact.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def is_exact(backend: str) -> bool:
    """Whether the registered backend ``backend`` returns exact neighbours."""
    return bool(getattr(RETRIEVAL_BACKENDS[backend], "exact", False))


def is_available(backend: str, device: torch.device | str) -> bool:
    """Whether ``backend`` can run natively on ``device`` (no host copies on GPU)."""
    check = getattr(RETRIEVAL_BACKENDS[backend], "available", None)
    return True if check is None else bool(check(torch.device(device)))


# ---------------------------------------------------------------------------- argument checks


def check_search_args(queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> None:
    """Raise a clear error when a search cannot return k neighbours per query."""
    if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(
            f"search expects queries [P, d] and pool [N, d], got {tuple(queries.shape)} and {tuple(pool.shape)}"
        )
    _check_k(pool, k, exclude)


def check_sets_args(queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> None:
    """:func:`check_search_args` for T sets: queries [T, P, d], exclude [T, E]."""
    if queries.ndim != 3 or pool.ndim != 2 or queries.shape[2] != pool.shape[1]:
        raise ValueError(
            f"search_sets expects queries [T, P, d] and pool [N, d], got {tuple(queries.shape)} "
            f"and {tuple(pool.shape)}"
        )
    if exclude is not None and (exclude.ndim != 2 or exclude.shape[0] != queries.shape[0]):
        raise ValueError(f"exclude must be [T={queries.shape[0]}, E], got {tuple(exclude.shape)}")
    for t in range(queries.shape[0] if exclude is not None else 0):
        _check_k(pool, k, exclude[t])  # type: ignore[index]
    if exclude is None:
        _check_k(pool, k, None)


def _check_k(pool: Tensor, k: int, exclude: Tensor | None) -> None:
    n_excluded = 0 if exclude is None else int(torch.unique(exclude).numel())
    available = pool.shape[0] - n_excluded
    if k < 0 or k > available:
        raise ValueError(
            f"cannot retrieve k={k} support embeddings from a candidate pool of {available} rows "
            f"(memory {pool.shape[0]} minus {n_excluded} anchors): lower the number of supports "
            f"or anchors, or enlarge the memory"
        )


def empty_result(queries: Tensor) -> tuple[Tensor, Tensor]:
    """The answer to a k = 0 search (any leading shape)."""
    lead = queries.shape[:-1]
    return (
        queries.new_zeros((*lead, 0)),
        torch.zeros((*lead, 0), dtype=torch.long, device=queries.device),
    )


# ---------------------------------------------------------------------------- shared helpers


def excluded_mask(idx: Tensor, exclude: Tensor) -> Tensor:
    """Bool like ``idx`` [T, ...]: True where ``idx[t, ...]`` is one of the rows ``exclude[t]`` [T, E]."""
    t = idx.shape[0]
    ex = exclude.to(idx.device).sort(dim=1).values
    flat = idx.reshape(t, -1).contiguous()
    pos = torch.searchsorted(ex, flat).clamp_max(ex.shape[1] - 1)
    return (ex.gather(1, pos) == flat).view(idx.shape)


def mask_excluded_(scores: Tensor, exclude: Tensor, start: int) -> None:
    """Set ``scores`` [T, P, C] (pool rows ``start .. start + C``) to -inf at set t's excluded rows.

    Writes T * E * P entries instead of scanning the whole block.
    """
    t, p, c = scores.shape
    local = exclude.to(scores.device) - start
    t_idx, e_idx = ((local >= 0) & (local < c)).nonzero(as_tuple=True)
    if t_idx.numel():
        rows = torch.arange(p, device=scores.device)
        scores[t_idx[:, None], rows[None, :], local[t_idx, e_idx][:, None]] = float("-inf")


def first_kept(sims: Tensor, idx: Tensor, keep: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` columns of each row whose ``keep`` is True, in order (sims/idx [..., F])."""
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :k]
    return sims.gather(-1, order), idx.gather(-1, order)


def overfetch_sets(
    search: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]],
    queries: Tensor,
    pool: Tensor,
    k: int,
    exclude: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Exact per-set exclusion for any search: fetch ``k + E`` unfiltered neighbours, drop banned.

    At most E of a query's top ``k + E`` rows are excluded, so k kept rows remain and they
    are the query's true top k among the allowed rows.
    """
    t, p, d = queries.shape
    extra = 0 if exclude is None else exclude.shape[1]
    fetch = min(k + extra, pool.shape[0])
    sims, idx = search(queries.reshape(t * p, d), pool, fetch)
    sims, idx = sims.view(t, p, fetch), idx.view(t, p, fetch)
    if not extra:
        return sims[..., :k], idx[..., :k]
    keep = ~excluded_mask(idx, exclude) & (idx >= 0)  # type: ignore[arg-type]
    return first_kept(sims, idx, keep, k)


@contextmanager
def exact_matmul(device: torch.device) -> Iterator[None]:
    """Full-precision fp32 matmuls and fp32-accumulated bf16 ones, autocast off, whatever the host enabled.

    A training script may allow TF32 (``set_float32_matmul_precision("high")``), reduced-precision
    bf16 reductions or bf16 autocast; exact retrieval must not inherit them.
    """
    precision = torch.get_float32_matmul_precision()
    flags = torch.backends.cuda.matmul
    reduced = flags.allow_bf16_reduced_precision_reduction
    torch.set_float32_matmul_precision("highest")
    flags.allow_bf16_reduced_precision_reduction = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)
        flags.allow_bf16_reduced_precision_reduction = reduced


class Workspace:
    """Reusable scratch tensors by name: big per-step buffers are not re-allocated (and re-faulted)."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        buf = self._bufs.get(name)
        numel = 1
        for n in shape:
            numel *= n
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


def merge_topk(best: tuple[Tensor, Tensor] | None, s: Tensor, i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Running top-k over pool chunks (values and global indices on the last dim)."""
    if best is None:
        return s, i
    cat_s, cat_i = torch.cat([best[0], s], dim=-1), torch.cat([best[1], i], dim=-1)
    top_s, pos = cat_s.topk(min(k, cat_s.shape[-1]), dim=-1)
    return top_s, cat_i.gather(-1, pos)


def search_sets(
    retrieval: Retrieval, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Search T sets at once: queries [T, P, d], exclude [T, E] -> ([T, P, k], [T, P, k]).

    Row ``exclude[t]`` is removed from the candidates of set t's queries only. Uses the
    backend's own ``search_sets`` when it has one, else one over-fetching ``search``.
    """
    check_sets_args(queries, pool, k, exclude)
    if k == 0:
        return empty_result(queries)
    native = getattr(retrieval, "search_sets", None)
    if native is not None:
        return native(queries, pool, k, exclude)
    return overfetch_sets(lambda q, x, kk: retrieval.search(q, x, kk), queries, pool, k, exclude)


def _as_sets(queries: Tensor, exclude: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A single search as one set: [P, d] -> [1, P, d], exclude [E] -> [1, E]."""
    return queries[None], None if exclude is None else exclude.reshape(1, -1)


# ---------------------------------------------------------------------------- torch


class SetSearch:
    """Base of the backends that search several SOP sets at once: ``search`` is one set."""

    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def search(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        check_search_args(queries, pool, k, exclude)
        if k == 0:
            return empty_result(queries)
        q, ex = _as_sets(queries, exclude)
        sims, idx = self.search_sets(q, pool, k, ex)
        return sims[0], idx[0]


@register_retrieval("torch")
class TorchRetrieval(SetSearch):
    """Exact search by matmul + topk, in row chunks of the pool so memory stays bounded.

    Excluded rows get a score of -inf inside each chunk (per set in :meth:`search_sets`),
    so exclusion costs no extra neighbours. Runs in the pool's dtype under
    :func:`exact_matmul`, so a bf16 or TF32 training step still ranks exactly. The score
    block is a reused buffer.

    Args:
        chunk_rows: pool rows scored at once; bounds the [T * P, chunk] score block.
    """

    name = "torch"
    exact = True

    def __init__(self, chunk_rows: int = 8_192) -> None:
        self.chunk_rows = chunk_rows
        self.workspace = Workspace()

    @torch.no_grad()
    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries [T, P, d], exclude [T, E] (set-wise) -> ([T, P, k], [T, P, k])."""
        if k == 0:
            return empty_result(queries)
        t, p, d = queries.shape
        flat = queries.reshape(t * p, d).to(pool.dtype)
        best: tuple[Tensor, Tensor] | None = None
        with exact_matmul(pool.device):
            for start in range(0, pool.shape[0], self.chunk_rows):
                block = pool[start : start + self.chunk_rows]
                out = self.workspace.get("scores", (t * p, block.shape[0]), pool.dtype, pool.device)
                scores = torch.mm(flat, block.T, out=out).view(t, p, -1)
                if exclude is not None:
                    mask_excluded_(scores, exclude, start)
                s, i = scores.topk(min(k, block.shape[0]), dim=-1)
                best = merge_topk(best, s, i + start, k)
        assert best is not None
        return best


# ---------------------------------------------------------------------------- faiss


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


def _faiss_available(device: torch.device) -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return device.type == "cpu" or (device.type == "cuda" and faiss_gpu_available())


@register_retrieval("faiss")
class FaissFlatRetrieval(SetSearch):
    """Exact flat inner-product search with faiss, without keeping an index.

    CPU tensors: ``faiss.knn`` on zero-copy numpy views of the live memory (rebuilding an
    ``IndexFlatIP`` every step would only add a copy). CUDA tensors with faiss-gpu:
    ``faiss.knn_gpu`` through ``faiss.contrib.torch_utils``, torch tensors in and out on the
    device, no host copies. CUDA tensors without faiss-gpu: searched on the host (copies).
    Excluded rows are dropped by over-fetching ``k + E`` neighbours (exact).
    faiss-gpu limits k + E to 2048.
    """

    name = "faiss"
    exact = True
    available = staticmethod(_faiss_available)

    def __init__(self) -> None:
        try:
            import faiss  # noqa: F401
        except ImportError as err:  # pragma: no cover - faiss is a base dependency
            raise ImportError(
                "retrieval='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu)"
            ) from err

    @torch.no_grad()
    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries [T, P, d], exclude [T, E] (set-wise) -> ([T, P, k], [T, P, k])."""
        if k == 0:
            return empty_result(queries)
        return overfetch_sets(self._knn, queries, pool, k, exclude)

    @staticmethod
    def _knn(queries: Tensor, pool: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Unfiltered top-k on the pool's device (host for CPU or without faiss-gpu)."""
        import faiss

        if pool.is_cuda and faiss_gpu_available():
            res = _gpu_resources()
            q = queries.detach().float().contiguous()
            x = pool.detach().float().contiguous()
            return faiss.knn_gpu(res, q, x, k, metric=faiss.METRIC_INNER_PRODUCT,
                                 device=pool.device.index or 0)
        q_np = queries.detach().float().cpu().contiguous().numpy()
        x_np = pool.detach().float().cpu().contiguous().numpy()
        sims, idx = faiss.knn(q_np, x_np, k, metric=faiss.METRIC_INNER_PRODUCT)
        out_s = torch.from_numpy(sims).to(device=queries.device, dtype=queries.dtype)
        return out_s, torch.from_numpy(idx).to(device=queries.device, dtype=torch.long)


# Register the backends that live in their own modules (they import from this one).
from sop_plugin.core import retrieval_auto as _retrieval_auto  # noqa: E402,F401
from sop_plugin.core import retrieval_bf16 as _retrieval_bf16  # noqa: E402,F401
from sop_plugin.core import retrieval_ivf as _retrieval_ivf  # noqa: E402,F401
