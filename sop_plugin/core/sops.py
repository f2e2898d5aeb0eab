"""Self-organizing prototypes (SOPs): building SOP sets from a memory and assigning embeddings to them.

A SOP set is P prototypes: an anchor drawn from the memory and its k nearest neighbours in the rest
of the memory (support embeddings, SEs). Each row votes for its SOP with weight w (anchor
1 - smoothing, SE its cosine to the anchor clamped to [0, 1]) and spreads 1 - w over the other P - 1.
An embedding u is assigned as ``softmax(u @ supports.T / tau) @ votes``. :func:`build_sops` is the
T = 1 case of :func:`build_sop_sets`; :func:`assign` takes either without materialising the votes.
Paper: "Self-Organizing Visual Prototypes for Non-Parametric Representation Learning"
(Thalles Silva, Helio Pedrini, Adín Ramírez Rivera, ICML 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.retrieval import Retrieval, get_retrieval, search_sets
from sop_plugin.core.timing import NULL_TIMER, PhaseTimer


@dataclass(frozen=True)
class SOPSet:
    """One SOP set, or T stacked sets (leading dim T); rows grouped per SOP: anchor p, then its k SEs.

    Attributes:
        supports: [P(k+1), d] (or [T, P(k+1), d]) anchors and SEs, no gradient.
        owner: [P(k+1)] index p of the SOP owning each row (the same for every set).
        weights: [P(k+1)] (or [T, P(k+1)]) contribution weight w of each row.
        memory_index: [P(k+1)] (or [T, P(k+1)]) memory row each support came from.
        num_sops: P.
    """

    supports: Tensor
    owner: Tensor
    weights: Tensor
    memory_index: Tensor
    num_sops: int

    @property
    def num_supports(self) -> int:
        """k, the number of SEs per anchor."""
        return self.owner.shape[0] // self.num_sops - 1

    @property
    def votes(self) -> Tensor:
        """Vote matrix Y [P(k+1), P] (or [T, P(k+1), P]): ``w`` to the owner, ``(1 - w)/(P - 1)``
        elsewhere; computed on demand (:func:`assign` never needs it)."""
        p = self.num_sops
        rest = ((1.0 - self.weights) / (p - 1))[..., None].expand(*self.weights.shape, p).clone()
        owner = self.owner.expand(self.weights.shape)[..., None]
        return rest.scatter_(-1, owner, self.weights[..., None])

    def __len__(self) -> int:
        """T, the number of stacked sets."""
        if self.supports.ndim != 3:
            raise TypeError("a single SOP set has no length; stacked sets ([T, ...]) have")
        return self.supports.shape[0]

    def __getitem__(self, t: int) -> SOPSet:
        """Set ``t`` of stacked sets."""
        if not 0 <= t < len(self):
            raise IndexError(f"set {t} of {len(self)}")
        return SOPSet(self.supports[t], self.owner, self.weights[t], self.memory_index[t], self.num_sops)


@ANCHOR_SELECTORS.register("uniform")
def sample_anchors(
    memory_size: int,
    num_anchors: int,
    num_sets: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniformly sample anchors without replacement, independently per set: [T, P] long, drawn on the
    CPU from ``generator`` so every DDP rank with the same generator state draws the same anchors."""
    if num_anchors > memory_size:
        raise ValueError(
            f"cannot draw {num_anchors} anchors from a memory of {memory_size} rows: "
            f"lower num_anchors or raise the memory size"
        )
    rows = [torch.randperm(memory_size, generator=generator)[:num_anchors] for _ in range(num_sets)]
    return torch.stack(rows).to(device)


@torch.no_grad()
def build_sop_sets(
    memory: Tensor,
    anchors: Tensor,
    num_supports: int,
    smoothing: float,
    retrieval: Retrieval | None = None,
    timer: PhaseTimer = NULL_TIMER,
) -> SOPSet:
    """T stacked SOP sets from ``memory`` [K, d] and anchor rows ``anchors`` [T, P].

    The SEs of each anchor are its ``num_supports`` nearest neighbours (cosine) among the memory rows
    that are not anchors of the same set, searched inside ``timer.phase("retrieval")``.
    """
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
    with timer.phase("retrieval"):
        sims, nn_idx = search_sets(retrieval or get_retrieval("torch"), memory[anchors], memory, k, anchors)
    memory_index = torch.cat([anchors[..., None], nn_idx], dim=2).reshape(t, -1)  # [T, R]
    anchor_w = torch.full((t, p, 1), 1.0 - smoothing, dtype=memory.dtype, device=memory.device)
    weights = torch.cat([anchor_w, sims.to(memory.dtype).clamp(0.0, 1.0)], dim=2).reshape(t, -1)
    owner = torch.arange(p, device=memory.device).repeat_interleave(k + 1)
    return SOPSet(memory[memory_index], owner, weights, memory_index, p)


def build_sops(
    memory: Tensor,
    anchor_idx: Tensor,
    num_supports: int,
    smoothing: float,
    retrieval: Retrieval | None = None,
    timer: PhaseTimer = NULL_TIMER,
) -> SOPSet:
    """One SOP set from ``memory`` [K, d] and anchor rows ``anchor_idx`` [P] (:func:`build_sop_sets`)."""
    if anchor_idx.ndim != 1:
        raise ValueError(f"anchor_idx must be 1-D [P], got shape {tuple(anchor_idx.shape)}")
    return build_sop_sets(memory, anchor_idx[None], num_supports, smoothing, retrieval, timer)[0]


def keep_random_sops(sets: SOPSet, keep: int, generator: torch.Generator) -> SOPSet:
    """``keep`` of the P SOPs of each stacked set, uniformly without replacement, with their SEs (the
    authors' "low_energy" rule reduces to a uniform random half: docs/design-notes.md)."""
    t, p = sets.supports.shape[0], sets.num_sops
    if not 2 <= keep <= p:
        raise ValueError(f"cannot keep {keep} of {p} SOPs: keep must be in [2, {p}]")
    pos = torch.stack([torch.randperm(p, generator=generator)[:keep].sort().values for _ in range(t)])
    pos = pos.to(sets.owner.device)
    per = sets.num_supports + 1
    rows = (pos[..., None] * per + torch.arange(per, device=pos.device)).reshape(t, -1)  # grouped per SOP
    owner = torch.arange(keep, device=pos.device).repeat_interleave(per)
    supports = sets.supports.gather(1, rows[..., None].expand(-1, -1, sets.supports.shape[-1]))
    return SOPSet(supports, owner, sets.weights.gather(1, rows), sets.memory_index.gather(1, rows), keep)


def assign(z: Tensor, sops: SOPSet, temperature: float) -> Tensor:
    """Assign embeddings ``z`` [N, d] to the SOPs: [N, P] probabilities, [T, N, P] for stacked sets.

    With rows grouped per SOP, ``softmax(z D^T / tau) Y`` is, for SOP p, the softmax mass of
    p's rows weighted by ``w - b`` plus every row's mass weighted by ``b = (1 - w) / (P - 1)``:
    O(N R) instead of the O(N R P) product with the dense Y.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z.shape[-1] != sops.supports.shape[-1]:
        dims = f"{z.shape[-1]} does not match the memory dim {sops.supports.shape[-1]}"
        raise ValueError(f"embedding dim {dims}")
    single = sops.supports.ndim == 2
    supports = sops.supports[None] if single else sops.supports  # [T, R, d]
    w = (sops.weights[None] if single else sops.weights).to(z.dtype)  # [T, R]
    t, r, _ = supports.shape
    p = sops.num_sops
    mass = (torch.einsum("nd,trd->tnr", z, supports.to(z.dtype)) / temperature).softmax(dim=-1)
    rest = (1.0 - w) / (p - 1)  # b: what each row gives every other SOP
    own = (mass * (w - rest)[:, None, :]).view(t, z.shape[0], p, r // p).sum(-1)
    probs = own + torch.bmm(mass, rest[..., None])
    return probs[0] if single else probs
