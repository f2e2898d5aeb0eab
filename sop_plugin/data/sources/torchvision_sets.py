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
from ..registry import DataPath, Loader, register_dataset

DEFAULT_ROOT = Path("~/.cache/sop-plugin/datasets")
#: training-set (mean, std) per channel
Stats = tuple[tuple[float, ...], tuple[float, ...]]


def _tvd() -> ModuleType:
    """``torchvision.datasets``, imported on first use (it is slow to import)."""
    from torchvision import datasets

    return datasets


@dataclass(frozen=True)
class TorchvisionSetInfo:
    """How to open one torchvision dataset and read its arrays."""

    name: str
    title: str
    summary: str  # one line for ``sop-data list``
    open: Callable[[str, str, bool], Any]  # (root, split, download) -> torchvision dataset
    layout: str  # layout of ``.data``
    labels_attr: str
    stats: Stats | None  # None: computed from the split
    splits: tuple[str, ...] = ("train", "test")

    def load(self, path: DataPath, split: str, download: bool) -> ArrayDataset:
        """Open ``split`` under ``path`` and copy it into an :class:`ArrayDataset`."""
        root = Path(path if path is not None else DEFAULT_ROOT).expanduser()
        try:
            source = self.open(str(root), split, download)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            raise DatasetNotFoundError(
                f"{self.title} not found under {root} "
                f"({'data.path' if path is not None else 'default root; data.path unset'}). "
                f"Pass data.download=true to let torchvision download it there, "
                f"or set data.path to the folder that already holds it."
            ) from error
        labels = np.asarray(getattr(source, self.labels_attr), dtype=np.int64)
        images, classes = np.asarray(source.data), tuple(source.classes)
        return ArrayDataset.from_arrays(self.name, split, images, labels, classes, self.layout, self.stats)


def _cifar(name: str, title: str, num_classes: int, stats: Stats) -> TorchvisionSetInfo:
    """CIFAR-10/100: torchvision's ``train=`` flag, NHWC ``.data``, ``.targets``."""

    def open_split(root: str, split: str, download: bool) -> Any:
        cifar = getattr(_tvd(), title.replace("-", ""))  # CIFAR10 / CIFAR100
        return cifar(root, train=split == "train", download=download)

    summary = f"{title} via torchvision, 50k/10k 32x32 RGB, {num_classes} classes"
    return TorchvisionSetInfo(name, title, summary, open_split, "NHWC", "targets", stats)


CIFAR10 = _cifar("cifar10", "CIFAR-10", 10, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))
CIFAR100 = _cifar("cifar100", "CIFAR-100", 100, ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
STL10 = TorchvisionSetInfo(
    name="stl10",
    title="STL-10",
    summary="STL-10 via torchvision, 5k/8k (+100k unlabeled) 96x96 RGB, 10 classes",
    open=lambda root, split, dl: _tvd().STL10(root, split=split, download=dl),
    layout="NCHW",
    labels_attr="labels",
    stats=None,
    splits=("train", "test", "unlabeled"),
)


def loader_for(info: TorchvisionSetInfo) -> Loader:
    """A loader ``(path, split, download)`` bound to ``info``, registered as dataset ``info.name``."""

    def load(path: DataPath = None, split: str = "train", download: bool = False) -> ArrayDataset:
        return info.load(path, split, download)

    load.__doc__ = f"{info.title} via torchvision (download only when asked)."
    return register_dataset(info.name, info.summary, info.splits)(load)


load_cifar10 = loader_for(CIFAR10)
load_cifar100 = loader_for(CIFAR100)
load_stl10 = loader_for(STL10)
