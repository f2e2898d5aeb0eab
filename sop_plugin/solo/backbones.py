"""The benchmark's ViT for solo-learn: ``backbone.name: vit_custom`` with the sizes in ``backbone.kwargs``.

solo-learn's ``vit_tiny`` ... ``vit_large`` fix the width and depth and keep timm's initialisation; the
benchmark trains a timm ViT of any size initialised by lightly's ``MaskedVisionTransformerTIMM``
(xavier weights, a fixed 2-D sine-cosine position embedding). ``vit_custom`` is that backbone, built
by the benchmark's own code, so a solo-learn run trains exactly the ViT the benchmark trains.

solo-learn reads every image as RGB, so a grey dataset reaches the backbone as 3 equal channels. With
``backbone.kwargs.in_chans: 1`` the ViT has the benchmark's 1-channel patch embedding and takes that
grey image itself. 3 equal input channels would otherwise act as the sum of 3 kernels: about 1.4 times
the bench's at initialisation, moving 3 times as far per Adam step (each copy takes the same step), on
the only layer that sees pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from solo.methods.base import BaseMethod
from timm.models.vision_transformer import VisionTransformer

from sop_plugin.bench.train.encoder import MaskedEncoder

NAME = "vit_custom"


def vit_custom(method: str | None = None, **kwargs: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` without classifier, initialised as the benchmark's.

    ``kwargs`` are timm's (img_size, patch_size, embed_dim, depth, num_heads, drop_path_rate, ...).
    """
    vit = VisionTransformer(num_classes=0, **kwargs)
    MaskedEncoder(vit, initialize=True)  # lightly's initialisation, in place (the wrapper is not kept)
    if vit.patch_embed.proj.in_channels == 1:
        vit.patch_embed.register_forward_pre_hook(grey_input)
    return vit


def grey_input(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor] | None:
    """The grey image behind 3 equal channels, for a 1-channel patch embedding.

    Args:
        args: ``(x,)``, x of shape [B, C, H, W]; C = 1 passes unchanged.
    Returns:
        ``(x[:, :1],)`` of shape [B, 1, H, W] when C = 3.
    Raises:
        ValueError: the channels differ (a colour image into a grey backbone).
    """
    (x,) = args
    if x.shape[1] == 1:
        return None
    if x.shape[1] != 3 or not torch.equal(x, x[:, :1].expand_as(x)):
        raise ValueError(
            f"backbone.kwargs.in_chans=1 takes grey images (1 channel, or 3 equal ones as solo-learn reads a "
            f"grey PNG); got {x.shape[1]} channels that differ. Drop in_chans for a colour dataset, or keep "
            f"every colour augmentation grey (saturation 0, hue 0)."
        )
    return (x[:, :1],)


def register_backbones() -> None:
    """Add :func:`vit_custom` to solo-learn's backbones (idempotent; another backbone under the name is
    an error)."""
    current = BaseMethod._BACKBONES.get(NAME)
    if current is not None and current is not vit_custom:
        raise ValueError(f"solo-learn already has a backbone named {NAME!r} ({current!r})")
    BaseMethod._BACKBONES[NAME] = vit_custom
