"""iBOT (Zhou et al., ICLR 2022) as a solo-learn method: ``IBOT(MaskedMomentumMethod)``.

Student = solo-learn backbone + lightly's ``DINOProjectionHead``, shared by the [CLS] token
and the patch tokens (the authors' ``shared_head`` ViT recipe); teacher = their EMA. Losses are
lightly's: ``DINOLoss`` across views on [CLS] (every student crop against the other teacher
global crop) and ``IBOTPatchLoss`` on the masked patches of each student global crop against
the teacher's unmasked patches of the same crop. The masked student, the non-finite policy and
gradient clipping are shared with SOP (:mod:`sop_plugin.solo.masked`); with a backbone without
patch tokens (ResNet, ...) the patch loss is off with a warning and iBOT trains as DINO.

Defaults (:data:`METHOD_KWARGS_DEFAULTS`) follow the iBOT authors' ViT recipe: 8,192
prototypes (use fewer on small data sets), ``norm_last_layer: False``, teacher temperature
0.04 -> 0.07 (linear warm-up, per step), last layer frozen for the first epoch, clipping at
3.0, masks on half the images at a ratio U(0.1, 0.5). The keys of solo-learn's DINO keep their
names, so ``dino.yaml`` and ``ibot.yaml`` differ only in what is iBOT's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss
from lightly.models.modules import DINOProjectionHead
from solo.utils.misc import omegaconf_select
from solo.utils.momentum import initialize_momentum_params
from torch import Tensor, nn

from sop_plugin.core import linear_warmup
from sop_plugin.runtime.nonfinite import nonfinite_buffers
from sop_plugin.solo.masked import SHARED_KEYS, MaskedMomentumMethod, allow_local_crops, fill_method_kwargs
from sop_plugin.solo.masked import shared_problems as _shared_problems

log = logging.getLogger(__name__)

#: Every ``method_kwargs`` key iBOT understands, with its default.
METHOD_KWARGS_DEFAULTS: dict[str, Any] = {
    "proj_hidden_dim": 2048,
    "proj_output_dim": 256,  # bottleneck before the prototypes
    "num_prototypes": 8192,
    "norm_last_layer": False,
    "student_temperature": 0.1,
    "teacher_temperature": 0.07,
    "warmup_teacher_temperature": 0.04,
    "warmup_teacher_temperature_epochs": 30,  # capped at max_epochs
    "freeze_last_layer": 1,  # epochs without prototype updates
    "center_momentum": 0.9,
    "mim_weight": 1.0,  # weight of the patch loss (iBOT's lambda_2)
    **SHARED_KEYS,
    "clip_grad": 3.0,
}


def _check_method_kwargs(cfg: omegaconf.DictConfig) -> None:
    """Raise ``ValueError`` listing every wrong iBOT setting (typos included)."""
    mk = cfg.method_kwargs
    errors = _shared_problems(cfg, "iBOT")
    unknown = sorted(set(mk) - set(METHOD_KWARGS_DEFAULTS))
    if unknown:
        errors.append(f"unknown method_kwargs {unknown}; iBOT takes {sorted(METHOD_KWARGS_DEFAULTS)}")
    for key in ("proj_hidden_dim", "proj_output_dim", "num_prototypes"):
        if int(mk[key]) < 1:
            errors.append(f"method_kwargs.{key}={mk[key]} must be >= 1")
    for key in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
        if float(mk[key]) <= 0:
            errors.append(f"method_kwargs.{key}={mk[key]} must be > 0")
    for key in ("warmup_teacher_temperature_epochs", "freeze_last_layer", "mim_weight"):
        if float(mk[key]) < 0:
            errors.append(f"method_kwargs.{key}={mk[key]} must be >= 0")
    if not 0 <= float(mk.center_momentum) < 1:
        errors.append(f"method_kwargs.center_momentum={mk.center_momentum} must be in [0, 1)")
    if errors:
        raise ValueError("invalid iBOT config (method_kwargs):\n  - " + "\n  - ".join(errors))


class IBOT(MaskedMomentumMethod):
    """iBOT: self-distillation on [CLS] (DINO) plus masked image modelling on patches.

    ``method_kwargs`` (all optional, see :data:`METHOD_KWARGS_DEFAULTS`): the head
    (``proj_hidden_dim``, ``proj_output_dim``, ``num_prototypes``, ``norm_last_layer``), the
    temperatures and their warm-up in epochs, ``freeze_last_layer`` (epochs), ``center_momentum``,
    ``mim_weight`` (0 = DINO), the masks, ``clip_grad`` and the non-finite policy.
    """

    patch_objective = "iBOT's patch loss"
    fallback = "the [CLS] (DINO) loss"

    def __init__(self, cfg: omegaconf.DictConfig):
        mk = self.add_and_assert_specific_cfg(cfg).method_kwargs
        seed = omegaconf_select(cfg, "seed", 0) or 0
        super().__init__(cfg, use_patches=float(mk.mim_weight) > 0, mask_seed=seed, name="iBOT")
        self.mim_weight = float(mk.mim_weight)
        self.freeze_last_layer = int(mk.freeze_last_layer)
        self.temps = (float(mk.warmup_teacher_temperature), float(mk.teacher_temperature))
        self.warmup_epochs = float(mk.warmup_teacher_temperature_epochs)
        if self.warmup_epochs > self.max_epochs:
            log.warning(
                "method_kwargs.warmup_teacher_temperature_epochs=%g > max_epochs=%d: the teacher "
                "temperature warms up over the whole run and ends at %g",
                self.warmup_epochs,
                self.max_epochs,
                self.temps[0] + (self.temps[1] - self.temps[0]) * self.max_epochs / self.warmup_epochs,
            )
        self.warmup_steps = 0

        def head() -> nn.Module:
            return DINOProjectionHead(
                self.features_dim,
                int(mk.proj_hidden_dim),
                int(mk.proj_output_dim),
                int(mk.num_prototypes),
                freeze_last_layer=self.freeze_last_layer,
                norm_last_layer=bool(mk.norm_last_layer),
            )

        self.head, self.momentum_head = head(), head()
        initialize_momentum_params(self.head, self.momentum_head)
        common = {"output_dim": int(mk.num_prototypes), "student_temp": float(mk.student_temperature)}
        common["center_momentum"] = float(mk.center_momentum)
        self.dino_loss = DINOLoss(**common, warmup_teacher_temp_epochs=0)
        self.patch_loss = IBOTPatchLoss(**common)

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Fills iBOT's ``method_kwargs`` defaults and raises ``ValueError`` on bad values."""
        cfg = super(IBOT, IBOT).add_and_assert_specific_cfg(cfg)
        if omegaconf_select(cfg, "method_kwargs", None) is None:
            cfg.method_kwargs = {}
        fill_method_kwargs(cfg, METHOD_KWARGS_DEFAULTS)
        _check_method_kwargs(cfg)
        allow_local_crops(cfg, "iBOT")
        return cfg

    @torch.no_grad()
    def momentum_forward(self, X: Tensor) -> dict[str, Any]:
        """Teacher on an unmasked global crop: feats, z (prototype scores) and, while training, patches."""
        out = super().momentum_forward(X)
        out["z"] = self.momentum_head(out["feats"])
        return out

    def teacher_temp(self, step: int) -> float:
        """The teacher temperature at ``step`` (linear warm-up, then constant)."""
        return linear_warmup(step, self.warmup_steps, *self.temps)

    def _draw_masks(self, views: Sequence[Tensor], batch_idx: int) -> list[Tensor]:
        """The shared block masks, with at least one masked patch per step: the patch loss updates its
        centre with the mean over the masked patches (all-reduced under DDP), undefined for none. With
        ``mask_prob`` 0.5 an all-unmasked step has probability 2^-(2B), so this changes almost nothing."""
        masks = super()._draw_masks(views, batch_idx)
        if masks and not any(bool(m.any()) for m in masks):
            masks[0][0, 0] = True
        return masks

    def on_train_start(self) -> None:
        """Converts the teacher-temperature warm-up from epochs to optimisation steps."""
        super().on_train_start()
        self.warmup_steps = self.steps_for_epochs(self.warmup_epochs)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """solo-learn's shared step (classifiers, kNN, teacher) plus iBOT's two losses."""
        out, masks = self.masked_training_step(batch, batch_idx, nn.ModuleList([self.dino_loss, self.patch_loss]))
        step = int(self.trainer.global_step)
        temp = self.teacher_temp(step)
        views = len(out["feats"])
        s_cls = self.head(torch.cat(out["feats"])).chunk(views)
        cls_loss = self.dino_loss(list(out["momentum_z"]), list(s_cls), teacher_temp=temp)
        patch_loss = cls_loss.new_zeros(())
        if self.use_mim:
            mask = torch.cat(masks)  # [G*B, N], True = masked; never empty (_draw_masks)
            s_out = self.head(torch.cat(out["patches"])[mask])
            with torch.no_grad():
                t_out = self.momentum_head(torch.cat(out["momentum_patches"])[mask])
            grid = mask.view(mask.shape[0], *self.patch_grid(batch[1][0]))
            patch_loss = self.patch_loss(t_out, s_out, grid, teacher_temp=temp)
        loss = cls_loss + self.mim_weight * patch_loss
        total = loss + out["loss"]
        if not self.finish_step(total, lambda: self._explain_nonfinite(cls_loss, patch_loss, out["loss"])):
            return total  # its gradients are dropped in on_before_optimizer_step
        metrics = {"train_ibot_loss": loss, "train_ibot_cls_loss": cls_loss}
        if self.use_mim:
            metrics["train_ibot_patch_loss"] = patch_loss
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        self.log("ibot_teacher_temp", temp, on_epoch=False, on_step=True)
        return total

    def on_after_backward(self) -> None:
        """Clips the student's gradients, and keeps the prototypes fixed in the first epochs."""
        super().on_after_backward()
        self.head.cancel_last_layer_gradients(self.current_epoch)

    def _explain_nonfinite(self, cls_loss: Tensor, patch_loss: Tensor, solo_loss: Tensor) -> str:
        parts = [
            f"{name} is {float(value):.4g}"
            for name, value in (
                ("the [CLS] loss", cls_loss),
                ("the patch loss", patch_loss),
                ("solo-learn's online classifier loss", solo_loss),
            )
            if not bool(torch.isfinite(value.detach()).all())
        ]
        bad = nonfinite_buffers(nn.ModuleList([self.dino_loss, self.patch_loss]))
        if bad:
            parts.append(f"non-finite loss centres {bad}")
        return "; ".join(parts) or "the total loss is non-finite"
