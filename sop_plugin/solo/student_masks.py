"""Block masks of the student's global crops, and the masked views of the ViTs that apply them.

The masks are the benchmark's (:class:`~sop_plugin.runtime.masking.BlockMaskGenerator`), drawn
from a generator seeded by (seed, step, batch, rank), so that a resumed or repeated step masks
the same patches. A masked ViT is lightly's ``MaskedVisionTransformerTIMM`` around solo-learn's
own timm ViT, sharing its weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sop_plugin.core import mix_seed, rank_and_world
from sop_plugin.methods import MaskConfig
from sop_plugin.runtime.masking import BlockMaskGenerator


class StudentMasks:
    """Draws the student's masks and encodes through masked views of the (momentum) backbone.

    Not a module: the masked views share the backbones' weights, and registering them would store
    every ViT weight twice per checkpoint.
    """

    def __init__(self, masks: MaskConfig, seed: int) -> None:
        self.masks, self.seed = masks, seed
        self._generators: dict[tuple[int, int], BlockMaskGenerator] = {}
        self._masked_vits: dict[bool, MaskedVisionTransformerTIMM] = {}

    def draw(
        self, views: Sequence[Tensor], grids: Sequence[tuple[int, int]], step: int, batch_idx: int
    ) -> list[Tensor]:
        """One bool mask [B, H*W] (True: masked) per view [B, C, ...] of patch grid (H, W); the same
        masks for the same (seed, step, batch, rank)."""
        seed = mix_seed(self.seed, step, batch_idx, rank_and_world()[0])
        gen = torch.Generator().manual_seed(seed)
        masks = []
        for x, grid in zip(views, grids):
            if grid not in self._generators:
                m = self.masks
                self._generators[grid] = BlockMaskGenerator(grid, m.prob, m.ratio, m.min_block)
            masks.append(self._generators[grid](x.shape[0], gen).to(x.device))
        return masks

    def masked_vit(
        self, vit: VisionTransformer, teacher: bool, mask_token: nn.Parameter
    ) -> MaskedVisionTransformerTIMM:
        """lightly's masked view of ``vit`` (the momentum backbone if ``teacher``), made once and kept in
        sync with the current backbone and mask token."""
        wrapper = self._masked_vits.get(teacher)
        if wrapper is None or wrapper.vit is not vit:
            wrapper = MaskedVisionTransformerTIMM(
                vit, mask_token=mask_token, weight_initialization="skip", pos_embed_initialization="skip"
            )
            self._masked_vits[teacher] = wrapper
        if wrapper.mask_token is not mask_token:
            wrapper.mask_token = mask_token
        return wrapper

    def encode(
        self, vit: VisionTransformer, X: Tensor, mask: Tensor | None, teacher: bool, mask_token: nn.Parameter
    ) -> tuple[Tensor, Tensor]:
        """Features [B, D] and patch tokens [B, N, D] of ``vit`` on images ``X`` [B, C, H, W], the
        patches that the bool ``mask`` [B, N] marks replaced by ``mask_token``."""
        prefix = int(vit.num_prefix_tokens)
        full_mask = None
        if mask is not None:
            full_mask = torch.cat([mask.new_zeros(mask.shape[0], prefix), mask], dim=1)
        tokens = self.masked_vit(vit, teacher, mask_token).encode(X, mask=full_mask)
        return vit.forward_head(tokens), tokens[:, prefix:]
