"""Shared fixtures of the solo-learn binding tests (skipped without solo-learn).

``SOP_REQUIRE_SOLO=1`` (set by CI for ``make test``'s solo pass) turns every skip in here into a
failure with the skip's reason, so that a green run proves that all of them ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

NUM_CLASSES = 5  # solo-learn's linear model reports top-5 accuracy: needs >= 5 classes
REQUIRE_ENV = "SOP_REQUIRE_SOLO"


def _fail_if_skipped(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get(REQUIRE_ENV, "0") in ("", "0"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but {REQUIRE_ENV}=1 requires every solo-learn test to run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_if_skipped(outcome.get_result())  # a module-level importorskip / skip


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_if_skipped(outcome.get_result())  # a skip mark or pytest.skip() in a test or fixture


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
