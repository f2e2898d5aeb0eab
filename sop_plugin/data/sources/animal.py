"""Animal-MNIST silhouettes from the PyPI package ``animal-mnist``.

The package ships two gzip-compressed pickles under
``animal_mnist/data/Animal_MNIST/``: ``animal_data_version_3.gz`` (uint8
``[10000, 28, 28]``) and ``animal_label_version_3.gz`` (int64 ``[10000]``),
1,000 images per class, labels in the alphabetical order of the class names.
Only the files are read: the package itself is never imported (its loader
module imports TensorFlow).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import pickle
from pathlib import Path

import numpy as np

from ..dataset import ArrayDataset, channel_stats, to_nchw
from ..errors import DatasetNotFoundError
from ..registry import DataPath, register_dataset
from ..splits import SPLIT_SEED, TEST_FRACTION, stratified_holdout

log = logging.getLogger(__name__)

ANIMAL_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
DATA_FILE = "animal_data_version_3.gz"
LABEL_FILE = "animal_label_version_3.gz"
SUMMARY = "Animal-MNIST silhouettes, 9,716 unique 28x28 grey, 10 classes, 80/20 split (pip: animal-mnist)"
INSTALL_HINT = (
    "Install it with `pip install animal-mnist` (it is not a dependency of sop-plugin), or set data.path "
    "to the folder holding animal_data_version_3.gz and animal_label_version_3.gz."
)

# The only globals a pickled numpy array needs; anything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain numpy arrays (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def load_pickled_array(path: Path) -> np.ndarray:
    """Read one gzip-compressed pickled numpy array, refusing anything else."""
    with gzip.open(path, "rb") as stream:
        array = _ArrayUnpickler(stream).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected a numpy array, got {type(array).__name__}")
    return array


def package_data_dir() -> Path | None:
    """``animal_mnist/data/Animal_MNIST`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def dedupe_first(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices (sorted) that survive dropping exact duplicate images.

    Rule: images are compared byte for byte; of every group of identical
    images only the first (lowest index) is kept, and if a group carries
    different labels the whole group is dropped (such an image has no single
    true class). In package version 0.4 there are 284 pairs, all agreeing, so
    9,716 of the 10,000 images are kept.
    """
    flat = images.reshape(len(images), -1)
    unique = np.unique(flat, axis=0, return_index=True, return_inverse=True, return_counts=True)
    _, first, inverse, counts = unique
    inverse = inverse.reshape(-1)
    keep = np.ones(len(first), dtype=bool)
    for group in np.flatnonzero(counts > 1):
        if len(np.unique(labels[inverse == group])) > 1:
            keep[group] = False
    return np.sort(first[keep])


@register_dataset("animal-mnist", SUMMARY)
def load_animal_mnist(
    path: DataPath = None,
    split: str = "train",
    download: bool = False,
    *,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> ArrayDataset:
    """Animal-MNIST, duplicates dropped, then split per class into train/test.

    The package has no official split: after :func:`dedupe_first`, each
    class is split by :func:`~sop_plugin.data.splits.stratified_holdout`
    (``test_fraction`` of it to ``test``, seeded by ``seed``). Mean/std are
    those of the resulting training split, whichever split is returned.
    """
    directory = Path(path).expanduser() if path is not None else package_data_dir()
    if directory is None or not (directory / DATA_FILE).is_file() or not (directory / LABEL_FILE).is_file():
        where = (
            "the package `animal_mnist` is not installed"
            if directory is None
            else f"no {DATA_FILE} + {LABEL_FILE} in {directory}"
        )
        note = " (data.download=true cannot fetch it.)" if download else ""
        raise DatasetNotFoundError(f"Animal-MNIST not found: {where}. {INSTALL_HINT}{note}")
    images = load_pickled_array(directory / DATA_FILE).astype(np.uint8, copy=False)
    labels = load_pickled_array(directory / LABEL_FILE).astype(np.int64, copy=False).reshape(-1)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{directory}: unexpected shapes {images.shape} / {labels.shape}")
    keep = dedupe_first(images, labels)
    log.info("animal-mnist: kept %d of %d images after dropping duplicates", len(keep), len(images))
    images, labels = images[keep], labels[keep]
    train_idx = stratified_holdout(labels, "train", test_fraction, seed)
    chosen = train_idx if split == "train" else stratified_holdout(labels, "test", test_fraction, seed)
    stats = channel_stats(to_nchw(images[train_idx], "NHW"))
    images, labels = images[chosen], labels[chosen]
    return ArrayDataset.from_arrays("animal-mnist", split, images, labels, ANIMAL_CLASSES, "NHW", stats)
