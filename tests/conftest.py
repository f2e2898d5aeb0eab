"""Suite-wide fixtures: the one tiny data set (see ``tinydata.py``, importable from every test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tinydata import make_idx_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 48 test 28x28 grey images of 10 classes in Fashion-MNIST's IDX layout."""
    return make_idx_dataset(tmp_path_factory.mktemp("tiny-fmnist"))
