"""The benchmark's masked ViT (lightly's MaskedVisionTransformerTIMM around a timm ViT)."""

import pytest
import torch

from sop_plugin.bench.train.encoder import MaskedEncoder, build_vit


def test_encoder_masks_change_only_with_mask() -> None:
    torch.manual_seed(0)
    enc = MaskedEncoder(build_vit(28, 7, 32, 2, 4, in_chans=1)).eval()
    x = torch.randn(2, 1, 28, 28)
    cls, patches = enc(x)
    assert cls.shape == (2, 32) and patches.shape == (2, 16, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    cls0, _ = enc(x, mask)
    torch.testing.assert_close(cls0, cls)
    mask[0, :8] = True
    cls1, _ = enc(x, mask)
    assert not torch.allclose(cls1[0], cls[0]) and torch.allclose(cls1[1], cls[1], atol=1e-6)


def test_vit_rejects_indivisible_image() -> None:
    with pytest.raises(ValueError, match="not divisible by patch size"):
        build_vit(30, 7, 32, 1, 4)
