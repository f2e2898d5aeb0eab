"""``torch``: exact search by chunked matmul + topk on the live memory, CPU or GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from sop_plugin.core.retrieval.registry import Hits, SetSearch, register_retrieval


@contextmanager
def exact_matmul(device: torch.device) -> Iterator[None]:
    """Full-precision fp32 matmuls and autocast off, whatever the host enabled: a training script
    may allow TF32 or run under bf16 autocast, and exact ranking must not inherit it."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


def mask_excluded_(scores: Tensor, exclude: Tensor, start: int) -> None:
    """Set ``scores`` [T, P, C] (pool rows ``start .. start + C``) to -inf at set t's excluded rows
    ``exclude`` [T, E]; writes T * E * P entries instead of scanning the whole block."""
    t, p, c = scores.shape
    local = exclude.to(scores.device) - start
    t_idx, e_idx = ((local >= 0) & (local < c)).nonzero(as_tuple=True)
    if t_idx.numel():
        rows = torch.arange(p, device=scores.device)
        scores[t_idx[:, None], rows[None, :], local[t_idx, e_idx][:, None]] = float("-inf")


def merge_topk(best: Hits | None, s: Tensor, i: Tensor, k: int) -> Hits:
    """Running top-k over pool chunks: values ``s`` and global indices ``i`` on the last dim."""
    if best is None:
        return s, i
    cat_s, cat_i = torch.cat([best[0], s], dim=-1), torch.cat([best[1], i], dim=-1)
    top_s, pos = cat_s.topk(min(k, cat_s.shape[-1]), dim=-1)
    return top_s, cat_i.gather(-1, pos)


@register_retrieval("torch")
class TorchRetrieval(SetSearch):
    """Exact search in row chunks of the pool (excluded rows scored -inf, under :func:`exact_matmul`).

    Args:
        chunk_rows: pool rows scored at once; bounds the reused [T * P, chunk] score buffer.
    """

    name = "torch"
    exact = True

    def __init__(self, chunk_rows: int = 8_192) -> None:
        self.chunk_rows = chunk_rows
        self._scores: Tensor | None = None

    def _buffer(self, rows: int, cols: int, like: Tensor) -> Tensor:
        buf = self._scores
        if buf is None or buf.dtype != like.dtype or buf.device != like.device or buf.numel() < rows * cols:
            buf = self._scores = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
        return buf[: rows * cols].view(rows, cols)

    def _search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None) -> Hits:
        t, p, d = queries.shape
        flat = queries.reshape(t * p, d).to(pool.dtype)
        best: Hits | None = None
        with exact_matmul(pool.device):
            for start in range(0, pool.shape[0], self.chunk_rows):
                block = pool[start : start + self.chunk_rows]
                out = self._buffer(t * p, block.shape[0], pool)
                scores = torch.mm(flat, block.T, out=out).view(t, p, -1)
                if exclude is not None:
                    mask_excluded_(scores, exclude, start)
                s, i = scores.topk(min(k, block.shape[0]), dim=-1)
                best = merge_topk(best, s, i + start, k)
        assert best is not None
        return best
