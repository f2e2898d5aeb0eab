"""Shared fixtures of the solo-learn binding tests (skipped without solo-learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NUM_CLASSES = 5  # solo-learn's linear model reports top-5 accuracy: needs >= 5 classes


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """5 classes of 28x28 grey PNGs: 4 training and 1 validation image each.

    The single validation batch (batch size 5) holds every class, which solo-learn's
    online kNN needs (it counts classes from the validation targets).
    """
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny-folder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 1)):
        for c in range(NUM_CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 50, size=(28, 28)) + 50 * c
                Image.fromarray(pixels.astype("uint8"), mode="L").save(folder / f"{i}.png")
    return root
