"""The real Fashion-MNIST from the Debian package, when installed."""

from __future__ import annotations

import pytest
import torch

from sop_plugin.data import get_dataset
from sop_plugin.data.sources.idx_sets import FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"{FASHION_MNIST_DIR} missing: sudo apt-get install -y dataset-fashion-mnist",
)


def test_real_fashion_mnist_splits_and_classes() -> None:
    train, test = get_dataset("fashion-mnist"), get_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
