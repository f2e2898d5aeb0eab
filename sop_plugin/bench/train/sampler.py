"""Seeded global batches, sliced per rank, resumable mid-epoch.

Every epoch draws one permutation of the training set from ``(seed, epoch)`` and cuts
it into *global* batches of ``world x batch_size`` images; rank ``r`` gets slice ``r``
of each. A DDP run on W processes with ``batch_size`` B therefore sees exactly the
global batches of a one-process run with ``batch_size`` W*B, in the same order (rank
order is the order of ``all_gather``). After a resume the sampler starts at the first
batch the checkpoint had not yet trained on, so nothing is skipped or repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from sop_plugin.core import rank_and_world


class EpochPermutation(Sampler[int]):
    """A permutation of ``range(num_items)`` drawn from ``(seed, epoch)``; Lightning calls ``set_epoch``."""

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=gen).tolist())


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler: this rank's slice of seeded global batches (incomplete ones dropped).

    Args:
        num_items: dataset size.
        batch_size: per-process batch size.
        seed: permutation seed (see :class:`EpochPermutation`, exposed as ``sampler``).
        position: ``f() -> (epoch, n)``: the epoch being trained and how many of its batches
            are already done (restored from a checkpoint); iteration starts at batch ``n``.
            Read when iteration starts, i.e. after Lightning restored the checkpoint: this
            does not rely on ``set_epoch``, which Lightning calls only *after* creating the
            first iterator of a fit (too late for a resumed epoch with worker processes,
            which draw their first batches when the iterator is created). Without it, the
            epoch comes from ``set_epoch`` and iteration starts at batch 0.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = EpochPermutation(num_items, seed)
        self.batch_size = batch_size
        self.position = position

    def __len__(self) -> int:
        return len(self.sampler) // (self.batch_size * rank_and_world()[1])

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = rank_and_world()
        start = 0
        if self.position is not None:
            epoch, start = self.position()
            self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        global_batch = self.batch_size * world
        for i in range(start, len(self)):
            first = i * global_batch + rank * self.batch_size
            yield order[first : first + self.batch_size]


class ResumableLoader(DataLoader):
    """A DataLoader Lightning treats as resumable mid-epoch.

    The position itself is restored by :class:`GlobalBatchSampler` (from the batch count the
    module keeps in its checkpoint), so the loader has no state of its own to save.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here (see the class docstring)."""
