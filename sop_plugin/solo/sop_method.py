"""SOP as a solo-learn method: ``SOP(MaskedMomentumMethod)``.

Student = solo-learn backbone + :class:`~sop_plugin.core.SOPHead`; teacher = their EMA
(solo-learn's momentum backbone and ``momentum_pairs``). The whole SOP signal (memories,
SOP sets, global SOP loss, SOP-MIM, memory updates) comes from
:class:`~sop_plugin.core.SOPObjective`; this class only feeds it head outputs. The masked ViT
student, the non-finite policy and gradient clipping are shared with iBOT
(:mod:`sop_plugin.solo.masked`); without patch tokens (ResNet, ...) SOP-MIM is off with a
warning and only the global SOP loss trains the model.

Everything else (online linear classifier, online kNN, momentum classifier, optimizers,
schedulers, checkpointing) is solo-learn's. All SOP settings live under
``method_kwargs``: the :class:`~sop_plugin.core.SOPConfig` fields under their own names,
plus :data:`SOLO_ONLY_KEYS`; see :data:`METHOD_KWARGS_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
from lightly.loss import KoLeoLoss
from solo.utils.misc import omegaconf_select
from solo.utils.momentum import initialize_momentum_params
from torch import Tensor

from sop_plugin.core import SOPConfig, SOPHead, SOPObjective
from sop_plugin.runtime import explain_nonfinite, world_size
from sop_plugin.solo.masked import SHARED_KEYS, MaskedMomentumMethod, allow_local_crops, fill_method_kwargs
from sop_plugin.solo.masked import shared_problems as _shared_problems

#: ``method_kwargs`` keys of the solo-learn host (not :class:`SOPConfig` fields), with defaults.
SOLO_ONLY_KEYS: dict[str, Any] = {
    # the teacher temperature warms up over this many epochs (converted to
    # warmup_teacher_temp_steps when training starts; 0 = use warmup_teacher_temp_steps)
    "warmup_teacher_temp_epochs": 0,
    **SHARED_KEYS,  # masks, clip_grad, on_nonfinite, max_consecutive_skips
}

#: Every ``method_kwargs`` key SOP understands, with its default: the :class:`SOPConfig`
#: fields, then :data:`SOLO_ONLY_KEYS`. ``seed: None`` means the run's top-level ``seed``.
METHOD_KWARGS_DEFAULTS: dict[str, Any] = {**dataclasses.asdict(SOPConfig()), "seed": None, **SOLO_ONLY_KEYS}


def global_batch_size(cfg: omegaconf.DictConfig) -> int | None:
    """Per-device batch size x devices x nodes, or None when the config does not say."""
    batch = omegaconf_select(cfg, "optimizer.batch_size", None)
    if batch is None:
        return None
    devices = omegaconf_select(cfg, "devices", 1)
    return int(batch) * world_size(devices, omegaconf_select(cfg, "num_nodes", 1))


def sop_config_from_cfg(cfg: omegaconf.DictConfig) -> SOPConfig:
    """The :class:`SOPConfig` of ``cfg.method_kwargs`` (checked and cast; seed None = run's seed)."""
    mk = cfg.method_kwargs
    seed = mk.get("seed")
    seed = omegaconf_select(cfg, "seed", 0) if seed is None else seed
    return SOPConfig.from_mapping({**mk, "seed": seed or 0}, extra=SOLO_ONLY_KEYS)


def _check_method_kwargs(cfg: omegaconf.DictConfig) -> None:
    """Raise ``ValueError`` listing every wrong SOP setting (typos included)."""
    mk = cfg.method_kwargs
    errors = _shared_problems(cfg, "SOP")
    epochs = float(mk.warmup_teacher_temp_epochs)
    if epochs < 0:
        errors.append(f"method_kwargs.warmup_teacher_temp_epochs={epochs:g} must be >= 0")
    if epochs > 0 and int(mk.warmup_teacher_temp_steps) > 0:
        errors.append("set method_kwargs.warmup_teacher_temp_epochs or warmup_teacher_temp_steps, not both")
    try:
        sop_config_from_cfg(cfg).validate(global_batch_size(cfg))
    except ValueError as exc:  # SOPConfig lists its problems one per "  - " line
        lines = [ln.strip() for ln in str(exc).splitlines()]
        errors.extend([ln[2:] for ln in lines if ln.startswith("- ")] or [str(exc)])
    if errors:
        raise ValueError("invalid SOP config (method_kwargs):\n  - " + "\n  - ".join(errors))


class SOP(MaskedMomentumMethod):
    """Self-Organizing visual Prototypes (Silva, Pedrini and Ramirez Rivera, ICML 2025).

    ``method_kwargs`` (all optional, see :data:`METHOD_KWARGS_DEFAULTS`): every
    :class:`~sop_plugin.core.SOPConfig` field under its own name (``dim``,
    ``head_hidden_dim`` and ``head_num_layers`` shape the head shared by [CLS] and patch
    tokens; ``seed`` defaults to the run's ``seed``), plus :data:`SOLO_ONLY_KEYS`:
    ``warmup_teacher_temp_epochs`` (converted to steps), the block masks of the student's
    global crops, ``clip_grad`` and the non-finite loss policy.
    """

    patch_objective = "SOP-MIM"
    fallback = "the global SOP loss"

    def __init__(self, cfg: omegaconf.DictConfig):
        c = sop_config_from_cfg(self.add_and_assert_specific_cfg(cfg))
        super().__init__(cfg, use_patches=c.mim_weight > 0, mask_seed=c.seed, name="SOP")
        self.sop_cfg: SOPConfig = c
        self.warmup_teacher_temp_epochs = float(cfg.method_kwargs.warmup_teacher_temp_epochs)
        head_kwargs = {"hidden_dim": c.head_hidden_dim, "bottleneck_dim": c.dim, "num_layers": c.head_num_layers}
        self.head = SOPHead(self.features_dim, **head_kwargs)
        self.momentum_head = SOPHead(self.features_dim, **head_kwargs)
        initialize_momentum_params(self.head, self.momentum_head)
        self.objective = SOPObjective(c, koleo=KoLeoLoss())

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Fills SOP's ``method_kwargs`` defaults and raises ``ValueError`` on bad values."""
        cfg = super(SOP, SOP).add_and_assert_specific_cfg(cfg)
        fill_method_kwargs(cfg, METHOD_KWARGS_DEFAULTS)
        _check_method_kwargs(cfg)
        allow_local_crops(cfg, "SOP")
        return cfg

    def on_train_start(self) -> None:
        """Converts the teacher-temperature warm-up from epochs to optimisation steps."""
        super().on_train_start()
        if self.warmup_teacher_temp_epochs > 0:
            self.objective.cfg.warmup_teacher_temp_steps = self.steps_for_epochs(self.warmup_teacher_temp_epochs)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """solo-learn's shared step (classifiers, kNN, teacher) plus the SOP objective."""
        out, masks = self.masked_training_step(batch, batch_idx, self.objective)
        s_z = torch.stack([self.head(f) for f in out["feats"]])
        with torch.no_grad():
            t_z = torch.stack([self.momentum_head(f) for f in out["momentum_feats"]])
        patches = (None, None, None)
        if self.use_mim:
            with torch.no_grad():
                t_p = torch.stack([self.momentum_head(p) for p in out["momentum_patches"]])
            patches = (torch.stack([self.head(p) for p in out["patches"]]), t_p, torch.stack(masks))
        result = self.objective(s_z, t_z, *patches, step=int(self.trainer.global_step))
        total = result.loss + out["loss"]
        if not self.finish_step(total, lambda: self._explain_nonfinite(out["loss"])):
            return total  # its gradients are dropped in on_before_optimizer_step
        metrics = {"train_sop_loss": result.loss, "train_sop_cls_loss": result.cls_loss}
        metrics["train_sop_mim_loss"] = result.mim_loss
        if self.sop_cfg.koleo_weight > 0:
            metrics["train_sop_koleo_loss"] = result.koleo_loss
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        extras = {"sop_teacher_temp": result.teacher_temp}
        extras.update({k if k.startswith("sop_") else f"sop_{k}": v for k, v in result.stats.items()})
        self.log_dict(extras, on_epoch=False, on_step=True)
        return total

    def _explain_nonfinite(self, solo_loss: Tensor) -> str:
        sop = explain_nonfinite(self.objective)
        if bool(torch.isfinite(solo_loss.detach()).all()):
            return sop
        return f"solo-learn's online classifier loss is {float(solo_loss):.4g}; SOP: {sop}"
