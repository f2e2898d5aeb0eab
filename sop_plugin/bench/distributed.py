"""Small DDP helpers of the benchmark: rank/world size, and DDP-exact lightly centres."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.models.modules.center import Center
from torch import Tensor, nn


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def exact_ddp_centers(module: nn.Module) -> None:
    """Make lightly's token centres (iBOT's patch centre) the mean over the tokens of *all* ranks.

    lightly averages per-rank means, which differs from one process whenever ranks hold
    different numbers of masked patches. Centres over whole batches (DINO's [CLS] centre,
    equal batch per rank) are already exact and are left alone.
    """
    for sub in module.modules():
        if isinstance(sub, Center) and tuple(sub.dim) == (0,) and hasattr(sub, "_center_fn"):
            sub._center_fn = token_mean_all_ranks


@torch.no_grad()
def token_mean_all_ranks(x: Tensor, dim: tuple[int, ...]) -> Tensor:
    """Mean of the rows of ``x`` [M, D] of every rank (each rank may hold a different M)."""
    total = x.sum(dim=dim, keepdim=True)
    count = torch.tensor([float(x.shape[0])], device=x.device, dtype=total.dtype)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    return total / count.clamp_min(1.0)
