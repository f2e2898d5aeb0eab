"""iBOT (Zhou et al., ICLR 2022) as a solo-learn method: ``IBOT(MaskedMomentumMethod)``.

Student = solo-learn backbone + lightly's ``DINOProjectionHead``, shared by the [CLS] token and
the patch tokens (the authors' ``shared_head`` ViT recipe); teacher = their EMA. Heads, losses
(lightly's ``DINOLoss`` and ``IBOTPatchLoss``), schedules and the last-layer freeze are
:class:`sop_plugin.methods.ibot.IBOTMethod`, the same code the benchmark trains; with a backbone
without patch tokens (ResNet, ...) the patch loss is off with a warning and iBOT trains as DINO.

Defaults (:data:`METHOD_KWARGS_DEFAULTS`) follow the iBOT authors' ViT recipe: 8,192
prototypes (use fewer on small data sets), ``norm_last_layer: False``, teacher temperature
0.04 -> 0.07 (linear warm-up, per step), last layer frozen for the first epoch, clipping at
3.0, masks on half the images at a ratio U(0.1, 0.5). Names are those of the benchmark and of
SOP; ``docs/solo-learn.md`` ("Names") maps them to solo-learn's DINO.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import omegaconf

from sop_plugin.methods import IBOTConfig
from sop_plugin.solo.masked import MaskedMomentumMethod
from sop_plugin.solo.settings import SHARED_KEYS, SoloSettings

log = logging.getLogger(__name__)

#: Every ``method_kwargs`` key iBOT understands, with its default.
METHOD_KWARGS_DEFAULTS: dict[str, Any] = {
    **dataclasses.asdict(IBOTConfig()),
    **SHARED_KEYS,
    "warmup_teacher_temp_epochs": 30,  # the authors' warm-up, capped at max_epochs
    "freeze_last_layer_epochs": 1,  # the authors: no prototype updates in the first epoch
}


class IBOT(MaskedMomentumMethod):
    """iBOT: self-distillation on [CLS] (DINO) plus masked image modelling on patches."""

    method_name = "ibot"
    display_name = "iBOT"
    METHOD_KWARGS_DEFAULTS = METHOD_KWARGS_DEFAULTS
    patch_objective = "iBOT's patch loss"
    fallback = "the [CLS] (DINO) loss"

    @classmethod
    def warn_unusual(cls, settings: SoloSettings, cfg: omegaconf.DictConfig) -> None:
        """A warm-up longer than the run ends it below ``teacher_temp``."""
        warm, epochs = settings.warmup_teacher_temp_epochs, int(cfg.max_epochs)
        if warm > epochs:
            log.warning(
                "method_kwargs.warmup_teacher_temp_epochs=%g > max_epochs=%d: the teacher temperature "
                "warms up over the whole run and ends below teacher_temp",
                warm,
                epochs,
            )
