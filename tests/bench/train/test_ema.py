"""The teacher EMA of the benchmark."""

import torch

from sop_plugin.bench.train.ema import ema_update


def test_ema_update() -> None:
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * before + 0.1 * b.weight.detach())
