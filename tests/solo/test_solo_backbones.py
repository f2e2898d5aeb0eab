"""``vit_custom`` with ``in_chans: 1``: a grey image read as RGB trains the bench's 1-channel ViT."""

from __future__ import annotations

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch  # noqa: E402

from sop_plugin.solo.backbones import vit_custom  # noqa: E402

KWARGS = {"img_size": 14, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}


def test_three_equal_channels_give_the_one_channel_output_and_gradient() -> None:
    torch.manual_seed(0)
    vit = vit_custom(**KWARGS, in_chans=1)
    grey = torch.randn(2, 1, 14, 14)
    vit(grey).sum().backward()
    one_channel = vit.patch_embed.proj.weight.grad.clone()
    vit.zero_grad()
    out = vit(grey.expand(-1, 3, -1, -1))
    out.sum().backward()
    torch.testing.assert_close(out, vit(grey), rtol=0, atol=0)
    # the kernel of 1 channel gets the gradient of 1 channel: not the 3 copies' step of an RGB embedding
    torch.testing.assert_close(vit.patch_embed.proj.weight.grad, one_channel, rtol=0, atol=0)
    assert vit.patch_embed.proj.weight.shape[1] == 1


def test_a_colour_image_into_a_grey_backbone_names_the_setting() -> None:
    vit = vit_custom(**KWARGS, in_chans=1)
    with pytest.raises(ValueError, match="in_chans=1"):
        vit(torch.randn(2, 3, 14, 14))


def test_without_in_chans_the_backbone_keeps_three_channels() -> None:
    vit = vit_custom(**KWARGS)
    assert vit.patch_embed.proj.weight.shape[1] == 3
    assert vit(torch.randn(2, 3, 14, 14)).shape == (2, 32)
