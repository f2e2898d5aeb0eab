"""Head and schedules."""

import pytest
import torch

from sop_plugin.core import SOPHead, cosine_schedule, linear_warmup, warmup_cosine


def test_head_outputs_unit_vectors_for_cls_and_patches() -> None:
    head = SOPHead(32, hidden_dim=64, bottleneck_dim=16)
    assert head(torch.randn(5, 32)).norm(dim=-1).allclose(torch.ones(5))
    assert head(torch.randn(2, 7, 32)).shape == (2, 7, 16)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in head.modules())
    assert n_linear == 3 and not any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())


def test_schedules() -> None:
    assert cosine_schedule(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(10, 10, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(5, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(50, 10, 0.04, 0.07) == 0.07
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(100, 100, 10, 1.0, 0.0) == pytest.approx(0.0)
