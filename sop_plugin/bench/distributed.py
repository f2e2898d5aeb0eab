"""DDP-exact lightly centres for the benchmark's iBOT."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.models.modules.center import Center
from torch import Tensor, nn

from sop_plugin.core import rank_and_world


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
    if rank_and_world()[1] > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    return total / count.clamp_min(1.0)
