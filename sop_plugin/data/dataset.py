"""In-memory image dataset shared by every source.

All datasets are held as one uint8 tensor ``[N, C, H, W]`` plus int64 labels,
so that the benchmark can augment whole batches on tensors (see
``augment.py``) instead of decoding and transforming images one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

# Images used to estimate per-channel statistics (evenly spaced over the set).
STATS_MAX_IMAGES = 10_000


def to_nchw(images: np.ndarray, layout: str) -> torch.Tensor:
    """Convert a uint8 array in ``layout`` ("NHW", "NHWC" or "NCHW") to a contiguous NCHW tensor."""
    permutations = {"NHW": None, "NHWC": (0, 3, 1, 2), "NCHW": (0, 1, 2, 3)}
    if layout not in permutations:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(permutations)}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim != len(layout):
        raise ValueError(f"layout {layout} needs {len(layout)} dims, got shape {images.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    order = permutations[layout]
    tensor = tensor.unsqueeze(1) if order is None else tensor.permute(*order)
    return tensor.contiguous()


def channel_stats(
    images: torch.Tensor, max_images: int = STATS_MAX_IMAGES
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``images`` in [0, 1] units.

    At most ``max_images`` evenly spaced images are used, which keeps the cost
    bounded on large sets and deterministic.
    """
    if images.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty dataset")
    step = max(1, -(-images.shape[0] // max_images))
    sample = images[::step].to(torch.float64).div_(255.0)
    per_channel = sample.transpose(0, 1).reshape(sample.shape[1], -1)
    mean = per_channel.mean(dim=1)
    std = per_channel.std(dim=1, correction=0)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


@dataclass(frozen=True, eq=False)
class ArrayDataset(Dataset):
    """A labelled image set held in memory.

    Attributes:
        name: registry name of the dataset (e.g. ``"fashion-mnist"``).
        split: ``"train"`` or ``"test"`` (or a source-specific split).
        images: uint8 tensor ``[N, C, H, W]``.
        labels: int64 tensor ``[N]`` (``-1`` marks unlabelled images).
        class_names: one name per class index.
        mean, std: per-channel normalisation constants in [0, 1] units.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            got = f"{self.images.dtype} {tuple(self.images.shape)}"
            raise ValueError(f"images must be uint8 [N,C,H,W], got {got}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            got = f"{self.labels.dtype} {tuple(self.labels.shape)}"
            raise ValueError(f"labels must be int64 [{self.images.shape[0]}], got {got}")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(self.mean)}/{len(self.std)}")
        top = int(self.labels.max()) if self.labels.numel() else -1
        if top >= len(self.class_names):
            raise ValueError(f"label {top} out of range for {len(self.class_names)} classes")

    @classmethod
    def from_arrays(
        cls,
        name: str,
        split: str,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        layout: str = "NHW",
        stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> ArrayDataset:
        """Build from numpy arrays; ``stats=None`` computes mean/std from ``images``."""
        tensor = to_nchw(images, layout)
        mean, std = channel_stats(tensor) if stats is None else stats
        return cls(
            name=name,
            split=split,
            images=tensor,
            labels=torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()),
            class_names=tuple(class_names),
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
        )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """Number of image channels (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ArrayDataset:
        """A dataset with only the rows in ``indices`` (statistics are kept)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[index], labels=self.labels[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (
            f"ArrayDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape=({c},{h},{w}), classes={self.num_classes})"
        )
