"""Mask generator, head, EMA and schedules."""

import pytest
import torch

from sop_plugin.core import BlockMaskGenerator, SOPHead, cosine_schedule, ema_update, linear_warmup, warmup_cosine


def test_block_masks_respect_probability_and_ratio() -> None:
    gen = BlockMaskGenerator((14, 14), mask_prob=0.5, ratio=(0.1, 0.5))
    masks = gen(400, torch.Generator().manual_seed(0))
    assert masks.shape == (400, 196) and masks.dtype == torch.bool
    frac = masks.float().mean(1)
    masked = frac > 0
    assert 0.4 < masked.float().mean() < 0.6
    assert frac.max() <= 0.5 + 1e-6
    assert frac[masked].mean() > 0.15


def test_block_masks_are_blocks_and_deterministic() -> None:
    gen = BlockMaskGenerator((8, 8), mask_prob=1.0, ratio=(0.3, 0.3))
    a = gen(8, torch.Generator().manual_seed(3))
    b = gen(8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    m = a[0].view(8, 8)
    # a masked patch in a block has a masked 4-neighbour
    ys, xs = torch.nonzero(m, as_tuple=True)
    for y, x in zip(ys.tolist(), xs.tolist()):
        neigh = [
            m[yy, xx] for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)) if 0 <= yy < 8 and 0 <= xx < 8
        ]
        assert any(neigh)


def test_block_mask_bad_settings() -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        BlockMaskGenerator((4, 4), mask_prob=1.5)
    with pytest.raises(ValueError, match="ratio"):
        BlockMaskGenerator((4, 4), ratio=(0.6, 0.2))


def test_head_outputs_unit_vectors_for_cls_and_patches() -> None:
    head = SOPHead(32, hidden_dim=64, bottleneck_dim=16)
    assert head(torch.randn(5, 32)).norm(dim=-1).allclose(torch.ones(5))
    assert head(torch.randn(2, 7, 32)).shape == (2, 7, 16)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in head.modules())
    assert n_linear == 3 and not any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())


def test_ema_and_schedules() -> None:
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * before + 0.1 * b.weight.detach())
    assert cosine_schedule(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(10, 10, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(5, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(50, 10, 0.04, 0.07) == 0.07
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(100, 100, 10, 1.0, 0.0) == pytest.approx(0.0)
