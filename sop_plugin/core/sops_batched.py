"""All T SOP sets of a step built with one search and no Python loop over sets.

Same result as ``[build_sops(memory, a, k, smoothing, retrieval) for a in anchors]``
(the anchors of set t are excluded from set t's pool only), but the T * P anchors are
searched together, which amortises the pass over the memory T times. :func:`assign_sets`
assigns embeddings to stacked sets without materialising the vote matrices.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sop_plugin.core.retrieval import Retrieval, get_retrieval, search_sets
from sop_plugin.core.sops import SOPSet


@torch.no_grad()
def build_sop_sets(
    memory: Tensor,
    anchors: Tensor,
    num_supports: int,
    smoothing: float,
    retrieval: Retrieval | None = None,
) -> list[SOPSet]:
    """T SOP sets from ``memory`` [K, d] and anchor rows ``anchors`` [T, P] (see :func:`build_sops`)."""
    if anchors.ndim != 2:
        raise ValueError(f"anchors must be [T, P], got shape {tuple(anchors.shape)}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    t, p = anchors.shape
    if p < 2:
        raise ValueError(f"a SOP set needs at least 2 anchors (num_anchors), got {p}")
    memory = memory.detach()
    anchors = anchors.to(memory.device)
    if bool((anchors.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("anchor_idx must not repeat a memory row within a set")
    k = num_supports
    sims, nn_idx = search_sets(retrieval or get_retrieval("torch"), memory[anchors], memory, k, anchors)
    # rows grouped per SOP: [anchor_p, se_p1 .. se_pk], per set
    memory_index = torch.cat([anchors[..., None], nn_idx], dim=2).reshape(t, -1)  # [T, R]
    anchor_w = torch.full((t, p, 1), 1.0 - smoothing, dtype=memory.dtype, device=memory.device)
    weights = torch.cat([anchor_w, sims.to(memory.dtype).clamp(0.0, 1.0)], dim=2).reshape(t, -1)
    owner = torch.arange(p, device=memory.device).repeat_interleave(k + 1)
    rest = ((1.0 - weights) / (p - 1))[..., None].expand(-1, -1, p).clone()
    votes = rest.scatter_(2, owner.expand(t, -1)[..., None], weights[..., None])  # [T, R, P]
    supports = memory[memory_index]  # [T, R, d]
    return [
        SOPSet(supports=supports[i], votes=votes[i], owner=owner, weights=weights[i], memory_index=memory_index[i])
        for i in range(t)
    ]


class StackedSets(NamedTuple):
    """T SOP sets stacked for :func:`assign_sets`: rows grouped per SOP (anchor, then its k SEs)."""

    supports: Tensor  # [T, R, d], R = P (k + 1)
    weights: Tensor  # [T, R] contribution weight of each row
    num_sops: int  # P


def stack_sets(sets: list[SOPSet]) -> StackedSets:
    """Stack sets built with the same P and k (as :func:`build_sop_sets` returns them)."""
    return StackedSets(torch.stack([s.supports for s in sets]), torch.stack([s.weights for s in sets]),
                       sets[0].num_sops)


def assign_sets(z: Tensor, sets: StackedSets, temperature: float) -> Tensor:
    """``assign`` for T stacked sets at once without the dense vote matrix: z [N, d] -> [T, N, P].

    With rows grouped per SOP, ``softmax(z D^T / tau) Y`` is, for SOP p, the softmax mass of
    p's rows weighted by ``w - b`` plus every row's mass weighted by ``b = (1 - w) / (P - 1)``:
    O(T N R) instead of the O(T N R P) product with Y.
    """
    t, r, _ = sets.supports.shape
    p = sets.num_sops
    logits = torch.einsum("nd,trd->tnr", z, sets.supports.to(z.dtype)) / temperature
    mass = logits.softmax(dim=-1)  # [T, N, R]
    w = sets.weights.to(z.dtype)
    rest = (1.0 - w) / (p - 1)  # b: what each row gives every other SOP
    own = (mass * (w - rest)[:, None, :]).view(t, z.shape[0], p, r // p).sum(-1)
    return own + torch.bmm(mass, rest[..., None])
