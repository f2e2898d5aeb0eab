"""CIFAR-10, CIFAR-100 and STL-10 through torchvision.

The files are read from ``data.path`` (default :data:`DEFAULT_ROOT`);
torchvision is asked to download them only when ``download=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..dataset import ArrayDataset
from ..errors import DatasetNotFoundError

DEFAULT_ROOT = Path("~/.cache/sop-plugin/datasets")


def _tvd() -> ModuleType:
    """``torchvision.datasets``, imported on first use (it is slow to import)."""
    from torchvision import datasets

    return datasets


@dataclass(frozen=True)
class TorchvisionSetInfo:
    """How to open one torchvision dataset and read its arrays."""

    name: str
    title: str
    open: Callable[[str, str, bool], Any]  # (root, split, download) -> torchvision dataset
    layout: str  # layout of ``.data``
    labels_attr: str
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # training-set mean/std; None: compute


def _cifar(name: str, title: str, cls: str, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> TorchvisionSetInfo:
    """CIFAR-10/100: torchvision's ``train=`` flag, NHWC ``.data``, ``.targets``."""
    return TorchvisionSetInfo(name, title, lambda root, split, dl: getattr(_tvd(), cls)(root, train=split == "train",
                              download=dl), "NHWC", "targets", stats)  # fmt: skip


CIFAR10 = _cifar("cifar10", "CIFAR-10", "CIFAR10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))
CIFAR100 = _cifar("cifar100", "CIFAR-100", "CIFAR100", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
STL10 = TorchvisionSetInfo(
    name="stl10",
    title="STL-10",
    open=lambda root, split, dl: _tvd().STL10(root, split=split, download=dl),
    layout="NCHW",
    labels_attr="labels",
    stats=None,
)


def load_torchvision_set(info: TorchvisionSetInfo, path: str | Path | None, split: str, download: bool) -> ArrayDataset:
    """Open ``split`` of ``info`` under ``path`` and copy it into an :class:`ArrayDataset`."""
    root = Path(path if path is not None else DEFAULT_ROOT).expanduser()
    try:
        source = info.open(str(root), split, download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(
            f"{info.title} not found under {root} "
            f"({'data.path' if path is not None else 'default root; data.path unset'}). "
            f"Pass data.download=true to let torchvision download it there, "
            f"or set data.path to the folder that already holds it."
        ) from error
    labels = np.asarray(getattr(source, info.labels_attr), dtype=np.int64)
    return ArrayDataset.from_arrays(
        info.name, split, np.asarray(source.data), labels, tuple(source.classes), info.layout, info.stats
    )


def loader_for(info: TorchvisionSetInfo) -> Callable[..., ArrayDataset]:
    """A registry loader ``(path, split, download)`` bound to ``info``."""

    def load(path: str | Path | None = None, split: str = "train", download: bool = False) -> ArrayDataset:
        return load_torchvision_set(info, path, split, download)

    load.__doc__ = f"{info.title} via torchvision (download only when asked)."
    return load
