"""Fixtures for the reliability tests: a tiny IDX dataset and the helpers in relutil."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# tiny models: one thread is ~30x faster than several competing for 2 shared cores
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
from relutil import LossRecorder, make_idx_dataset, state_of, tiny_config  # noqa: E402

from sop_plugin.bench.runner import fit_method, load_data  # noqa: E402


@pytest.fixture(scope="session")
def idx_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 32 test 16x16 grey images in Fashion-MNIST's IDX layout."""
    return make_idx_dataset(tmp_path_factory.mktemp("rel-idx"))


@pytest.fixture(scope="session")
def straight(idx_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, float], dict, Path]:
    """The reference: 12 sop steps (2 epochs of 6) without interruption -> (losses, final state, run dir)."""
    out = tmp_path_factory.mktemp("straight")
    cfg = tiny_config(out, idx_data)
    train, test = load_data(cfg)
    rec = LossRecorder()
    fitted = fit_method("sop", cfg, train, test, out, callbacks=[rec])
    assert fitted.trainer.global_step == 12 and sorted(rec.losses) == list(range(12))
    return rec.losses, state_of(fitted.module), out
