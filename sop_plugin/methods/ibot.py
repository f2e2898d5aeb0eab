"""iBOT (Zhou et al., ICLR 2022) on lightly's losses: DINO on [CLS] plus a masked-patch loss.

One head (lightly's ``DINOProjectionHead``) serves [CLS] and patch tokens, the authors'
``shared_head`` ViT recipe. The patch centre is the mean over the masked tokens of *all* ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.loss import IBOTPatchLoss
from lightly.models.modules import center as lightly_center
from torch import Tensor

from sop_plugin.core import rank_and_world
from sop_plugin.methods.base import MethodOutput, Tokens
from sop_plugin.methods.config import IBOTConfig, MaskConfig
from sop_plugin.methods.prototypes import PrototypeMethod
from sop_plugin.methods.registry import register_method


class TokenCenter(lightly_center.Center):
    """lightly's ``Center`` whose batch centre is the mean over the rows of every rank.

    lightly averages per-rank means, which differs from one process with the same global batch
    whenever ranks hold different numbers of masked patches (one may hold none).
    """

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Move the centre towards the mean of ``x`` [M, K] over all ranks (M may differ, or be 0)."""
        total = x.sum(dim=0, keepdim=True)
        count = torch.tensor([float(x.shape[0])], device=x.device, dtype=total.dtype)
        if rank_and_world()[1] > 1 and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        if float(count) == 0:  # no masked patch anywhere: nothing to average
            return
        self.center = lightly_center.center_momentum(self.center, total / count, self.momentum)


class ExactIBOTPatchLoss(IBOTPatchLoss):
    """lightly's ``IBOTPatchLoss`` with the all-rank token centre (:class:`TokenCenter`)."""

    def __init__(self, output_dim: int, student_temp: float, center_momentum: float) -> None:
        super().__init__(output_dim=output_dim, student_temp=student_temp, center_momentum=center_momentum)
        self.center = TokenCenter(size=(1, output_dim), momentum=center_momentum)


@register_method("ibot")
class IBOTMethod(PrototypeMethod):
    """iBOT's heads and losses.

    Args:
        embed_dim: the backbone's token dimension D.
        cfg: iBOT's settings.
        masks: the student's block masks (the authors': half the images, ratio U(0.1, 0.5)); none
            when ``cfg.mim_weight == 0`` (iBOT is then DINO).

    A step in which no image of the global batch has a masked patch has a zero patch loss and
    leaves the patch centre as it is; under DDP a rank without masked patches still joins the
    centre's all-reduce, so no rank waits for it.
    """

    config_class = IBOTConfig
    default_masks = MaskConfig(prob=0.5, ratio=(0.1, 0.5))

    def __init__(self, embed_dim: int, cfg: IBOTConfig, masks: MaskConfig | None = default_masks) -> None:
        super().__init__(embed_dim, cfg, masks if cfg.mim_weight > 0 else None)
        self.patch_loss = ExactIBOTPatchLoss(cfg.num_prototypes, cfg.student_temp, cfg.center_momentum)

    def forward(self, tokens: Tokens, step: int) -> MethodOutput:  # noqa: D102
        cls_loss, koleo = self.class_loss(tokens.student_cls, tokens.teacher_cls, step)
        patch_loss = cls_loss.new_zeros(())
        if self.uses_masks and tokens.masks is not None:
            patch_loss = self._patch_loss(tokens, step)
        loss = cls_loss + self.cfg.mim_weight * patch_loss + self.cfg.koleo_weight * koleo
        logs = {
            "loss_cls": float(cls_loss.detach()),
            "loss_mim": float(patch_loss.detach()),
            "teacher_temp": self.teacher_temperature(step),
        }
        if self.cfg.koleo_weight > 0:
            logs["loss_koleo"] = float(koleo.detach())
        return MethodOutput(loss, logs)

    def _patch_loss(self, tokens: Tokens, step: int) -> Tensor:
        """lightly's patch loss on the masked patches; the teacher sees the same patches unmasked."""
        assert tokens.student_patches is not None and tokens.teacher_patches is not None
        assert tokens.masks is not None
        g, b, n, d = tokens.student_patches.shape
        m = tokens.masks.reshape(g * b, n)
        s_out = self.student_head(tokens.student_patches.reshape(g * b, n, d)[m])
        t_out = self.teacher_head(tokens.teacher_patches.reshape(g * b, n, d)[m])
        side = int(round(n**0.5))
        grid_mask = m.view(g * b, side, n // side)
        if m.any() or rank_and_world()[1] > 1:
            return self.patch_loss(t_out, s_out, grid_mask, teacher_temp=self.teacher_temperature(step))
        return s_out.sum() * 0.0
