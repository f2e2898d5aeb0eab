"""DINO (Caron et al., ICCV 2021) on lightly's head and loss: [CLS] only, prototypes, centering."""

from __future__ import annotations

from sop_plugin.methods.base import MethodOutput, Tokens
from sop_plugin.methods.config import DINOConfig
from sop_plugin.methods.prototypes import PrototypeMethod
from sop_plugin.methods.registry import register_method


@register_method("dino")
class DINOMethod(PrototypeMethod):
    """DINO: self-distillation of the [CLS] token across views (no masks, no patch tokens).

    Args:
        embed_dim: the backbone's token dimension D.
        cfg: DINO's settings.
        masks: ignored (DINO reads no patch tokens); accepted so every method is built alike.
    """

    config_class = DINOConfig
    default_masks = None

    def __init__(self, embed_dim: int, cfg: DINOConfig, masks: object = None) -> None:
        super().__init__(embed_dim, cfg, None)

    def forward(self, tokens: Tokens, step: int) -> MethodOutput:  # noqa: D102
        cls_loss, koleo = self.class_loss(tokens.student_cls, tokens.teacher_cls, step)
        logs = {"loss_cls": float(cls_loss.detach()), "teacher_temp": self.teacher_temperature(step)}
        if self.cfg.koleo_weight > 0:
            logs["loss_koleo"] = float(koleo.detach())
        return MethodOutput(cls_loss + self.cfg.koleo_weight * koleo, logs)
