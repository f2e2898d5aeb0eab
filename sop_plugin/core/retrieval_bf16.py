"""``torch-bf16``: exact search that ranks in bf16 and re-ranks a certified shortlist in fp32.

Where bf16 matmuls are much faster than fp32 ones (CPUs with AVX512-BF16 or AMX, GPUs),
scoring the memory in bf16 and re-scoring only a short list in fp32 is several times
cheaper than an fp32 scan, and stays exact:

* every bf16 score is within ``eps = (3u + 3u^2 + 2 d 2^-24) |q| max|x|`` of the fp32 one
  (u = 2^-8; rounding of the query, of the row and of the output, plus fp32 accumulation);
* with ``tau`` the k-th best bf16 score of a query, every true top-k row has a bf16 score
  of at least ``tau - 2 eps``; so when the ``shortlist``-th best bf16 score is below that,
  the shortlist provably holds the true top k, which fp32 dot products then rank;
* queries whose shortlist cannot be certified (near-ties, a collapsed memory) are searched
  again in fp32, so the answer is always the exact one (ties aside).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sop_plugin.core.retrieval import (
    SetSearch,
    TorchRetrieval,
    Workspace,
    empty_result,
    exact_matmul,
    mask_excluded_,
    merge_topk,
    register_retrieval,
)

UNIT = 2.0**-8  # bf16 unit roundoff


def score_error_bound(queries: Tensor, pool: Tensor) -> Tensor:
    """Per-query bound on |bf16 score - fp32 score| (see the module docstring): [Q]."""
    d = queries.shape[-1]
    coeff = 3 * UNIT + 3 * UNIT * UNIT + 2 * d * 2.0**-24
    max_row = torch.linalg.vector_norm(pool.float(), dim=1).amax()
    return 1.01 * coeff * torch.linalg.vector_norm(queries.float(), dim=-1) * max_row


@register_retrieval("torch-bf16")
class TorchBF16Retrieval(SetSearch):
    """Exact search: bf16 scan for a shortlist, certified, re-ranked in fp32 (fp32 fallback).

    Only the certified-ambiguous head of each shortlist (rows within ``2 eps`` of the k-th
    bf16 score) is re-scored in fp32. The shortlist length adapts between ``2 k`` and
    ``max_shortlist``: it doubles when more than 1% of the queries needed the fallback and
    halves when the ambiguous heads use less than half of it. It never exceeds one row in
    ``rows_per_candidate`` of the memory (at least ``2 k``): re-ranking gathers the shortlisted
    rows, which costs far more per row than the bf16 scan, so a longer shortlist would make the
    search slower than a plain fp32 one (seen at 8,192 rows: 60 ms against 8 ms with a 512-row
    shortlist on a memory of repeated embeddings). When most queries of a call need the
    fallback (a memory of near-duplicates, e.g. early in training), the next ``probe_every``
    calls go straight to fp32 before bf16 is tried again.

    Args:
        shortlist: initial bf16 candidates kept per query.
        max_shortlist: upper limit of the adaptive shortlist.
        rows_per_candidate: the shortlist is at most ``memory rows // rows_per_candidate``.
        chunk_rows: pool rows scored at once (bounds the bf16 copy and score buffers).
        probe_every: fp32-only calls after a call where most queries fell back.

    Attributes:
        last_fallback: queries of the last call that needed the fp32 fallback.
    """

    name = "torch-bf16"
    exact = True

    def __init__(self, shortlist: int = 32, max_shortlist: int = 512, chunk_rows: int = 8_192,
                 probe_every: int = 16, rows_per_candidate: int = 128) -> None:
        self.shortlist, self.max_shortlist, self.chunk_rows = shortlist, max_shortlist, chunk_rows
        self.rows_per_candidate = rows_per_candidate
        self.initial_shortlist, self.probe_every = shortlist, probe_every
        self.fp32_calls_left = 0
        self.workspace = Workspace()
        self.fallback = TorchRetrieval(chunk_rows)
        self.last_fallback = 0

    @torch.no_grad()
    def search_sets(
        self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """queries [T, P, d], exclude [T, E] (set-wise) -> ([T, P, k], [T, P, k])."""
        if k == 0:
            return empty_result(queries)
        if self.fp32_calls_left > 0:
            self.fp32_calls_left -= 1
            return self.fallback.search_sets(queries, pool, k, exclude)
        t, p, d = queries.shape
        with exact_matmul(pool.device):
            approx, cand = self._shortlist(queries, pool, k, exclude)  # sorted, best first
            kk = cand.shape[-1]
            eps = score_error_bound(queries, pool)
            needed = (approx >= (approx[..., k - 1] - 2 * eps)[..., None]).sum(-1)  # ambiguous head length
            certified = (needed < kk) | torch.isinf(approx[..., -1]) | (kk >= pool.shape[0])
            head = max(k, int(needed[certified].max()) if bool(certified.any()) else k)
            q = queries.reshape(t * p, d).to(pool.dtype)
            rows = pool[cand[..., :head].reshape(t * p, head)]
            exact = torch.bmm(rows, q[:, :, None]).view(t, p, head)
            exact.masked_fill_(torch.isinf(approx[..., :head]), float("-inf"))
            sims, pos = exact.topk(k, dim=-1)
            idx = cand.gather(-1, pos)
            self._fix_uncertified(~certified, queries, pool, k, exclude, sims, idx)
        self._adapt(head, t * p, k, pool.shape[0])
        return sims.to(queries.dtype), idx

    def shortlist_limit(self, memory_rows: int, k: int) -> int:
        """The longest shortlist worth re-ranking for a memory of ``memory_rows`` rows."""
        return max(2 * k, min(self.max_shortlist, memory_rows // self.rows_per_candidate))

    def _adapt(self, head: int, num_queries: int, k: int, memory_rows: int) -> None:
        limit = self.shortlist_limit(memory_rows, k)
        if self.last_fallback > 0.5 * num_queries:
            self.fp32_calls_left, self.shortlist = self.probe_every, self.initial_shortlist
        elif self.last_fallback > 0.01 * num_queries:
            self.shortlist = 2 * self.shortlist
        elif 2 * head <= self.shortlist and self.shortlist > 2 * k:
            self.shortlist = max(2 * k, self.shortlist // 2)
        self.shortlist = min(self.shortlist, limit)

    def _shortlist(self, queries: Tensor, pool: Tensor, k: int,
                   exclude: Tensor | None) -> tuple[Tensor, Tensor]:
        """The best ``shortlist`` rows of every query by bf16 score: (scores fp32, indices) [T, P, kk]."""
        t, p, d = queries.shape
        kk = min(max(min(self.shortlist, self.shortlist_limit(pool.shape[0], k)), k), pool.shape[0])
        qb = queries.reshape(t * p, d).to(torch.bfloat16)
        best: tuple[Tensor, Tensor] | None = None
        ws, dev = self.workspace, pool.device
        for start in range(0, pool.shape[0], self.chunk_rows):
            block = pool[start : start + self.chunk_rows]
            rows = block.shape[0]
            xb = ws.get("rows", (rows, d), torch.bfloat16, dev).copy_(block)
            scores = torch.mm(qb, xb.T, out=ws.get("scores", (t * p, rows), torch.bfloat16, dev)).view(t, p, rows)
            if exclude is not None:
                mask_excluded_(scores, exclude, start)
            s, i = scores.topk(min(kk, rows), dim=-1)
            best = merge_topk(best, s.float(), i + start, kk)
        assert best is not None
        return best

    def _fix_uncertified(self, bad: Tensor, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None,
                         sims: Tensor, idx: Tensor) -> None:
        """Search the uncertified queries again in fp32 (each as its own one-query set)."""
        self.last_fallback = int(bad.sum())
        if not self.last_fallback:
            return
        t_idx, p_idx = bad.nonzero(as_tuple=True)
        ex = None if exclude is None else exclude.to(pool.device)[t_idx]
        s, i = self.fallback.search_sets(queries[t_idx, p_idx][:, None, :], pool, k, ex)
        sims[t_idx, p_idx], idx[t_idx, p_idx] = s[:, 0].to(sims.dtype), i[:, 0]
