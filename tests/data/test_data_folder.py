"""image-folder source: layouts, corrupt files, sizes and channels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sop_plugin.data import DatasetCorruptError, DatasetNotFoundError, get_dataset


def _png(path: Path, value: int, size: tuple[int, int] = (6, 6), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


def _flat_folder(root: Path, per_class: int = 5, corrupt: int = 1) -> None:
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 10 * c + i)
    for i in range(corrupt):
        (root / "dog" / f"broken{i}.png").write_bytes(b"not a png at all")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")


def test_flat_folder_skips_corrupt_and_warns(tmp_path: Path, caplog) -> None:
    _flat_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        train = get_dataset("image-folder", path=tmp_path, max_corrupt_fraction=0.2)
        test = get_dataset("image-folder", path=tmp_path, split="val", max_corrupt_fraction=0.2)
    assert "skipped 1 unreadable" in caplog.text
    assert len(train) + len(test) == 10
    assert train.class_names == ("cat", "dog") and train.images.shape[1:] == (1, 6, 6)
    values = sorted(int(x) for x in np.concatenate([train.images[:, 0, 0, 0], test.images[:, 0, 0, 0]]))
    assert values == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    for ds in (train, test):  # label follows the folder
        pixels = ds.images[:, 0, 0, 0]
        assert all((int(v) >= 10) == bool(lab) for v, lab in zip(pixels, ds.labels, strict=True))


def test_too_many_corrupt_files_fail(tmp_path: Path) -> None:
    _flat_folder(tmp_path, per_class=2, corrupt=3)
    with pytest.raises(DatasetCorruptError, match="unreadable"):
        get_dataset("image-folder", path=tmp_path, split="train", test_fraction=0.5)


def test_empty_or_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="class sub-folders"):
        get_dataset("image-folder", path=tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        get_dataset("image-folder", path=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="data.path"):
        get_dataset("image-folder")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        get_dataset("image-folder", path=tmp_path / "nope")


def test_train_val_layout_uses_train_class_indices(tmp_path: Path) -> None:
    for name in ("ant", "bee", "cow"):
        _png(tmp_path / "train" / name / "0.png", 1)
    _png(tmp_path / "val" / "cow" / "0.png", 2)
    val = get_dataset("image-folder", path=tmp_path, split="test")
    assert val.class_names == ("ant", "bee", "cow") and val.labels.tolist() == [2]


def test_sizes_and_channels(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "0.png", 50, size=(10, 6))
    _png(tmp_path / "train" / "b" / "0.png", 90, size=(6, 6), mode="RGB")
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("image-folder", path=tmp_path)
    ds = get_dataset("image-folder", path=tmp_path, image_size=4)
    assert ds.images.shape == (2, 3, 4, 4) and len(ds.mean) == 3  # one RGB image -> 3 channels
    assert ds.images[0].unique().tolist() == [50]  # grey image repeated over channels
    grey = get_dataset("image-folder", path=tmp_path, image_size=4, channels=1)
    assert grey.images.shape == (2, 1, 4, 4)
