"""Self-organizing prototypes: building SOP sets from a memory and assigning embeddings.

A SOP set is P prototypes, each made of one anchor drawn from the memory and its k
nearest neighbours in the rest of the memory (its support embeddings, SEs). Every
support row votes for its own SOP with weight w (anchor: 1 - smoothing; SE: its
cosine similarity to the anchor clamped to [0, 1]) and spreads 1 - w evenly over the
other P - 1 SOPs. An embedding u is assigned to the SOPs as
``softmax(u @ supports.T / tau) @ votes``, a distribution over the P SOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sop_plugin.core.retrieval import Retrieval, get_retrieval


@dataclass(frozen=True)
class SOPSet:
    """One SOP set; rows are grouped per SOP: anchor p, then its k SEs.

    Attributes:
        supports: [P(k+1), d] support embeddings (anchors and SEs), no gradient.
        votes: [P(k+1), P] vote matrix Y, rows sum to 1.
        owner: [P(k+1)] index p of the SOP owning each row.
        weights: [P(k+1)] contribution weight w of each row.
        memory_index: [P(k+1)] row of the memory each support came from.
    """

    supports: Tensor
    votes: Tensor
    owner: Tensor
    weights: Tensor
    memory_index: Tensor

    @property
    def num_sops(self) -> int:
        return self.votes.shape[1]

    @property
    def num_supports(self) -> int:
        """k, the number of SEs per anchor."""
        return self.supports.shape[0] // self.num_sops - 1


def vote_matrix(owner: Tensor, weights: Tensor, num_sops: int) -> Tensor:
    """Y [R, P]: weight ``w`` to the owner column, ``(1 - w) / (P - 1)`` to every other."""
    if num_sops < 2:
        raise ValueError(f"a SOP set needs at least 2 anchors (num_anchors), got {num_sops}")
    rest = (1.0 - weights) / (num_sops - 1)
    votes = rest[:, None].expand(-1, num_sops).clone()
    votes.scatter_(1, owner[:, None], weights[:, None])
    return votes


def sample_anchors(
    memory_size: int,
    num_anchors: int,
    num_sets: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniformly sample anchors without replacement, independently per set: [T, P] long.

    Draws on the CPU from ``generator`` so every DDP rank with the same generator
    state draws the same anchors, whatever its device.
    """
    if num_anchors > memory_size:
        raise ValueError(
            f"cannot draw {num_anchors} anchors from a memory of {memory_size} rows: "
            f"lower num_anchors or raise the memory size"
        )
    rows = [torch.randperm(memory_size, generator=generator)[:num_anchors] for _ in range(num_sets)]
    return torch.stack(rows).to(device)


@torch.no_grad()
def build_sops(
    memory: Tensor,
    anchor_idx: Tensor,
    num_supports: int,
    smoothing: float,
    retrieval: Retrieval | None = None,
) -> SOPSet:
    """Build one SOP set from ``memory`` [K, d] and anchor rows ``anchor_idx`` [P].

    The SEs of each anchor are its ``num_supports`` nearest neighbours (cosine) among
    the memory rows that are not anchors of this set. Deterministic given
    ``anchor_idx`` (ties aside).
    """
    if anchor_idx.ndim != 1:
        raise ValueError(f"anchor_idx must be 1-D [P], got shape {tuple(anchor_idx.shape)}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    memory = memory.detach()
    anchor_idx = anchor_idx.to(memory.device)
    p, k = anchor_idx.numel(), num_supports
    if p < 2:
        raise ValueError(f"a SOP set needs at least 2 anchors (num_anchors), got {p}")
    if int(torch.unique(anchor_idx).numel()) != p:
        raise ValueError("anchor_idx must not repeat a memory row")
    anchors = memory[anchor_idx]
    retrieval = retrieval or get_retrieval("torch")
    sims, nn_idx = retrieval.search(anchors, memory, k, exclude=anchor_idx)
    # rows grouped per SOP: [anchor_p, se_p1 .. se_pk]
    memory_index = torch.cat([anchor_idx[:, None], nn_idx], dim=1).reshape(-1)
    anchor_w = torch.full((p, 1), 1.0 - smoothing, dtype=memory.dtype, device=memory.device)
    weights = torch.cat([anchor_w, sims.to(memory.dtype).clamp(0.0, 1.0)], dim=1).reshape(-1)
    owner = torch.arange(p, device=memory.device).repeat_interleave(k + 1)
    return SOPSet(
        supports=memory[memory_index],
        votes=vote_matrix(owner, weights, p),
        owner=owner,
        weights=weights,
        memory_index=memory_index,
    )


def assign(z: Tensor, sops: SOPSet, temperature: float) -> Tensor:
    """Assign embeddings ``z`` [N, d] to the SOPs: [N, P] probabilities (rows sum to 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z.shape[-1] != sops.supports.shape[1]:
        raise ValueError(
            f"embedding dim {z.shape[-1]} does not match the memory dim {sops.supports.shape[1]}"
        )
    logits = z @ sops.supports.to(z.dtype).T / temperature
    return logits.softmax(dim=-1) @ sops.votes.to(z.dtype)
