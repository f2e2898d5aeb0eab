"""Masked ViT encoder: [CLS] and patch tokens, with mask tokens where the student is masked.

Wraps a timm ``VisionTransformer`` in lightly's ``MaskedVisionTransformerTIMM`` (no
home-made ViT); solo-learn's ``vit_*`` backbones are timm ViTs, so both hosts use it.
"""

from __future__ import annotations

import torch
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


def build_vit(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """A timm ViT without classifier; raises if the image does not tile into patches."""
    if img_size % patch_size != 0:
        raise ValueError(
            f"image size {img_size} is not divisible by patch size {patch_size}: "
            f"change model.patch_size or data.img_size"
        )
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        num_classes=0,
        drop_path_rate=drop_path_rate,
        dynamic_img_size=True,
    )


class MaskedEncoder(nn.Module):
    """Returns ([CLS] [B, D], patch tokens [B, N, D]) of images, optionally masked.

    Args:
        vit: a timm VisionTransformer (e.g. from :func:`build_vit` or solo-learn's ``vit_*``).
        initialize: apply lightly's ViT weight and sincos position-embedding init; pass
            False to keep the backbone's own initialisation (e.g. solo-learn's).
    """

    def __init__(self, vit: VisionTransformer, initialize: bool = True) -> None:
        super().__init__()
        skip = "" if initialize else "skip"
        self.masked_vit = MaskedVisionTransformerTIMM(
            vit=vit, weight_initialization=skip, pos_embed_initialization="sincos" if initialize else "skip"
        )
        self.num_prefix = vit.num_prefix_tokens

    @property
    def embed_dim(self) -> int:
        return int(self.masked_vit.vit.embed_dim)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``mask``: bool [B, N] over patches (True = replace by the mask token)."""
        full_mask = None
        if mask is not None:
            prefix = torch.zeros(mask.shape[0], self.num_prefix, dtype=torch.bool, device=mask.device)
            full_mask = torch.cat([prefix, mask.to(images.device)], dim=1)
        tokens = self.masked_vit.encode(images, mask=full_mask)
        return tokens[:, 0], tokens[:, self.num_prefix :]
