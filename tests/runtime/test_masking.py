"""Block masks of the student's global views (shared by both hosts)."""

import pytest
import torch

from sop_plugin.runtime.masking import BlockMaskGenerator


def test_block_masks_respect_probability_and_ratio() -> None:
    gen = BlockMaskGenerator((14, 14), prob=0.5, ratio=(0.1, 0.5), min_block=4)
    masks = gen(400, torch.Generator().manual_seed(0))
    assert masks.shape == (400, 196) and masks.dtype == torch.bool
    frac = masks.float().mean(1)
    masked = frac > 0
    assert 0.4 < masked.float().mean() < 0.6
    assert frac.max() <= 0.5 + 1e-6
    assert frac[masked].mean() > 0.15


def test_block_masks_are_blocks_and_deterministic() -> None:
    gen = BlockMaskGenerator((8, 8), prob=1.0, ratio=(0.3, 0.3), min_block=4)
    a = gen(8, torch.Generator().manual_seed(3))
    b = gen(8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    m = a[0].view(8, 8)
    # a masked patch in a block has a masked 4-neighbour
    ys, xs = torch.nonzero(m, as_tuple=True)
    for y, x in zip(ys.tolist(), xs.tolist()):
        around = ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
        neigh = [m[yy, xx] for yy, xx in around if 0 <= yy < 8 and 0 <= xx < 8]
        assert any(neigh)


def test_block_mask_bad_settings() -> None:
    with pytest.raises(ValueError, match="prob"):
        BlockMaskGenerator((4, 4), prob=1.5, ratio=(0.1, 0.5), min_block=4)
    with pytest.raises(ValueError, match="ratio"):
        BlockMaskGenerator((4, 4), prob=0.5, ratio=(0.6, 0.2), min_block=4)
