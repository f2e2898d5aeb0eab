"""Dataset registry: name -> loader, and the one entry point :func:`get_dataset`.

A loader has the signature ``(path, split, download, **options) -> ArrayDataset`` and registers
itself with :func:`register_dataset` in its source module (``sources/``); this module imports no
source, ``sop_plugin.data`` imports them all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sop_plugin.registry import Registry

from .dataset import ArrayDataset
from .splits import canonical_split

Loader = Callable[..., ArrayDataset]
#: a loader's ``path`` argument (``data.path``); None: the dataset's default location
DataPath = str | Path | None
DEFAULT_DATASET = "fashion-mnist"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, a one-line summary and the splits it has."""

    name: str
    loader: Loader
    summary: str
    splits: tuple[str, ...] = ("train", "test")


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(
    name: str, summary: str, splits: tuple[str, ...] = ("train", "test")
) -> Callable[[Loader], Loader]:
    """Decorator: register the decorated loader as dataset ``name`` (unique); returns the loader."""

    def add(loader: Loader) -> Loader:
        DATASETS.register(name)(DatasetSpec(name, loader, summary, splits))
        return loader

    return add


def list_datasets() -> list[str]:
    """Registered dataset names, the default first, then by name."""
    return sorted(DATASETS, key=lambda name: (name != DEFAULT_DATASET, name))


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (any case); unknown names get a did-you-mean error."""
    return DATASETS.get(name.strip().lower())


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
        path: where the files are (``data.path``); ``None`` uses the dataset's default location.
        split: ``train`` or ``test`` (``val``/``validation`` mean ``test``).
        download: allow torchvision sets to download; nothing else downloads.
        options: source-specific keywords (e.g. ``image_size`` for image-folder).

    Raises:
        DatasetNotFoundError: files missing; the message names the setting and the install command.
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
