"""What DINO and iBOT share: lightly's prototype head and [CLS] loss, the temperature warm-up,
the last-layer freeze and the optional KoLeo term.

DINO: Caron et al., ICCV 2021 (arXiv 2104.14294); iBOT: Zhou et al., ICLR 2022 (arXiv 2111.07832).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from lightly.loss import DINOLoss, KoLeoLoss
from lightly.models.modules import DINOProjectionHead
from torch import Tensor, nn

from sop_plugin.core import linear_warmup
from sop_plugin.methods.base import Method, MethodOutput, masks_text, teacher_of, temperature_text
from sop_plugin.methods.config import DINOConfig, MaskConfig
from sop_plugin.runtime.nonfinite import nonfinite_buffers

#: logged loss key -> its name in the non-finite explanation
LOSS_NAMES = {"loss_cls": "class loss", "loss_mim": "patch loss", "loss_koleo": "KoLeo loss"}


def bottleneck(head: DINOProjectionHead, x: Tensor) -> Tensor:
    """The L2-normalised bottleneck of lightly's ``DINOProjectionHead`` (what its prototype layer sees)."""
    return nn.functional.normalize(head.layers(x), dim=-1)


class PrototypeMethod(Method):
    """Heads and [CLS] loss of DINO and iBOT (lightly's ``DINOProjectionHead`` and ``DINOLoss``).

    The prototype layer is kept fixed for ``cfg.freeze_last_layer_steps`` steps (lightly's
    ``cancel_last_layer_gradients``, counted in steps); ``cfg.koleo_weight`` > 0 adds lightly's
    KoLeo on the student's normalised bottleneck of the global views.
    """

    def __init__(self, embed_dim: int, cfg: DINOConfig, masks: MaskConfig | None) -> None:
        super().__init__(masks)
        self.cfg = cfg

        def make() -> nn.Module:
            return DINOProjectionHead(
                embed_dim,
                cfg.head_hidden_dim,
                cfg.dim,
                cfg.num_prototypes,
                freeze_last_layer=cfg.freeze_last_layer_steps,
                norm_last_layer=cfg.norm_last_layer,
            )

        self.student_head = make()
        self.teacher_head = teacher_of(self.student_head, make)
        self.cls_loss = DINOLoss(
            output_dim=cfg.num_prototypes, student_temp=cfg.student_temp, center_momentum=cfg.center_momentum
        )
        self.koleo = KoLeoLoss()

    def set_step_schedule(self, warmup_teacher_temp_steps: int, freeze_last_layer_steps: int = 0) -> None:
        """Warm-up and freeze lengths in steps (a host counting in epochs converts once)."""
        self.cfg = dataclasses.replace(
            self.cfg,
            warmup_teacher_temp_steps=int(warmup_teacher_temp_steps),
            freeze_last_layer_steps=int(freeze_last_layer_steps),
        ).validate()
        self.student_head.freeze_last_layer = self.cfg.freeze_last_layer_steps

    def after_backward(self, step: int) -> None:
        """Zero the prototype layer's gradients during the first ``freeze_last_layer_steps`` steps."""
        self.student_head.cancel_last_layer_gradients(step)

    def teacher_temperature(self, step: int) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` over ``warmup_teacher_temp_steps``, then constant."""
        c = self.cfg
        return linear_warmup(step, c.warmup_teacher_temp_steps, c.warmup_teacher_temp, c.teacher_temp)

    @torch.no_grad()
    def teacher_embedding(self, cls: Tensor) -> Tensor:  # noqa: D102
        return bottleneck(self.teacher_head, cls)

    @torch.no_grad()
    def teacher_distribution(self, cls: Tensor, step: int) -> Tensor:  # noqa: D102
        logits = self.teacher_head(cls) - self.cls_loss.center.reshape(1, -1)
        return (logits / self.teacher_temperature(step)).softmax(dim=-1)

    def class_loss(self, s_cls: Tensor, t_cls: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """DINO's [CLS] loss of student [V, B, D] against teacher [G, B, D] tokens, and the KoLeo term.

        The KoLeo term is zero unless ``koleo_weight`` > 0.
        """
        z = bottleneck(self.student_head, s_cls)
        s_out = self.student_head.last_layer(z)
        t_out = self.teacher_head(t_cls)
        loss = self.cls_loss(list(t_out), list(s_out), teacher_temp=self.teacher_temperature(step))
        koleo = loss.new_zeros(())
        if self.cfg.koleo_weight > 0:
            koleo = torch.stack([self.koleo(z[i].float()) for i in range(t_cls.shape[0])]).mean()
        return loss, koleo

    def explain_nonfinite(self, output: MethodOutput) -> str:
        """The logged loss parts, the teacher temperature and any non-finite centre."""
        parts = [f"total loss {float(output.loss.detach()):.4g}"]
        for key, name in LOSS_NAMES.items():
            if key in output.logs:
                value = float(output.logs[key])
                parts.append(f"{name} {value:.4g}{'' if math.isfinite(value) else ' (non-finite)'}")
        if "teacher_temp" in output.logs:
            parts.append(f"teacher temperature {float(output.logs['teacher_temp']):g}")
        bad = nonfinite_buffers(self)
        parts.append("non-finite buffers: " + (", ".join(bad) if bad else "none"))
        return "; ".join(parts)

    @classmethod
    def describe(cls, config: DINOConfig, masks: MaskConfig | None) -> dict[str, str]:  # noqa: D102
        c = config
        return {
            "teacher_temp": temperature_text(c),
            "masks": masks_text(masks if getattr(c, "mim_weight", 0.0) > 0 else None),
            "koleo_weight": f"{c.koleo_weight:g}",
            "own": (
                f"{c.num_prototypes} prototypes, norm_last_layer {c.norm_last_layer}, "
                f"last layer frozen {c.freeze_last_layer_steps} steps"
            ),
        }
