"""Fixtures for the reliability tests: the uninterrupted reference run (data: the suite's ``tiny_data``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.fit import fit_method
from tests.reliability.relutil import LossRecorder, state_of, tiny_config

# tiny models: one thread is ~30x faster than several competing for 2 shared cores
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def straight(
    tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[int, float], dict, Path]:
    """The reference: 12 sop steps (2 epochs of 6) without interruption -> (losses, final state, run dir)."""
    out = tmp_path_factory.mktemp("straight")
    cfg = tiny_config(out, tiny_data)
    train, test = load_data(bench_settings(cfg))
    rec = LossRecorder()
    fitted = fit_method("sop", bench_settings(cfg), train, test, out, callbacks=[rec])
    assert fitted.trainer.global_step == 12 and sorted(rec.losses) == list(range(12))
    return rec.losses, state_of(fitted.module), out
