"""Fixtures for the data tests: tiny generated IDX folders and datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sop_plugin.data import ArrayDataset, write_idx


def write_idx_dir(
    directory: Path,
    n_train: int = 30,
    n_test: int = 10,
    size: int = 28,
    compress: bool = True,
    dotted: bool = False,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four MNIST-style IDX files of random data into ``directory``; return the arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        sep = "." if dotted else "-"
        write_idx(directory / f"{prefix}-images{sep}idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels{sep}idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.fixture(name="write_idx_dir")
def write_idx_dir_fixture() -> Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The :func:`write_idx_dir` helper, as a fixture (no cross-test imports needed)."""
    return write_idx_dir


@pytest.fixture
def idx_dir(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A folder with gzip IDX files: 30 train and 10 test images."""
    arrays = write_idx_dir(tmp_path / "idx")
    return tmp_path / "idx", arrays


@pytest.fixture
def make_dataset() -> Callable[..., ArrayDataset]:
    """Factory of small random :class:`ArrayDataset` objects."""

    def make(
        n: int = 12,
        channels: int = 1,
        size: int = 8,
        class_names: tuple[str, ...] = ("T-shirt/top", "Bag", "coat"),
        split: str = "train",
        seed: int = 0,
    ) -> ArrayDataset:
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
        labels = torch.arange(n, dtype=torch.int64) % len(class_names)
        return ArrayDataset("tiny", split, images, labels, class_names, (0.5,) * channels, (0.25,) * channels)

    return make
