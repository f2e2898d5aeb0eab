"""FIFO memory of unit vectors: the class and patch support memories of SOP.

A module buffer, so it travels with ``state_dict`` and every checkpoint; enqueueing all-gathers
across ranks first so that every DDP rank holds the same memory after each step.
Paper: "Self-Organizing Visual Prototypes for Non-Parametric Representation Learning"
(Thalles Silva, Helio Pedrini, Adín Ramírez Rivera, ICML 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sop_plugin.core.distributed import gather_across_ranks


class SupportMemory(nn.Module):
    """A FIFO queue ``bank`` [size, dim] of unit vectors, starting as random ones drawn from ``seed``
    (the same on every rank); ``ptr`` is the next row to overwrite."""

    bank: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"SupportMemory needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        gen = torch.Generator().manual_seed(seed)
        init = nn.functional.normalize(torch.randn(size, dim, generator=gen), dim=1)
        self.register_buffer("bank", init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    @torch.no_grad()
    def enqueue(self, x: Tensor, gather: bool = True) -> None:
        """Write ``x`` [n, d] (normalised here) over the oldest rows, wrapping around; with ``gather``
        and a process group, the rows of all ranks (rank 0's first), so every rank's memory agrees."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"enqueue expects [n, {self.dim}] embeddings, got {tuple(x.shape)}")
        x = x.detach()
        if gather:
            x = gather_across_ranks(x)
        n = x.shape[0]
        if n > self.size:
            raise ValueError(
                f"cannot enqueue {n} rows into a memory of {self.size}: raise the memory size "
                f"(e.g. class_memory_size / patch_memory_size) to at least the global batch size"
            )
        x = nn.functional.normalize(x.to(self.bank.dtype), dim=1)
        start = int(self.ptr)
        idx = (torch.arange(n, device=self.bank.device) + start) % self.size
        self.bank.index_copy_(0, idx, x)
        self.ptr.fill_((start + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
