"""SOP as a solo-learn method: ``SOP(BaseMomentumMethod)``.

Student = solo-learn backbone + :class:`~sop_plugin.core.SOPHead`; teacher = their EMA
(solo-learn's momentum backbone and ``momentum_pairs``). The whole SOP signal (memories,
SOP sets, global SOP loss, SOP-MIM, memory updates) comes from
:class:`~sop_plugin.core.SOPObjective`; this class only feeds it head outputs.

With a ViT backbone the two global crops of the student are masked block-wise (iBOT
style) through lightly's ``MaskedVisionTransformerTIMM`` around solo-learn's own timm
ViT (solo-learn's initialisation is kept), and the patch tokens feed SOP-MIM. With a
backbone without patch tokens (ResNet, ...) SOP-MIM is switched off with a warning and
only the global SOP loss trains the model.

Everything else (online linear classifier, online kNN, momentum classifier, optimizers,
schedulers, checkpointing) is solo-learn's. All SOP settings live under
``method_kwargs``: the :class:`~sop_plugin.core.SOPConfig` fields under their own names,
plus :data:`SOLO_ONLY_KEYS`; see :data:`METHOD_KWARGS_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn.functional as F
from lightly.loss import KoLeoLoss
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from solo.methods.base import BaseMomentumMethod
from solo.utils.metrics import accuracy_at_k
from solo.utils.misc import omegaconf_select
from solo.utils.momentum import initialize_momentum_params
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sop_plugin.core import SOPConfig, SOPHead, SOPObjective, mix_seed, rank_and_world
from sop_plugin.runtime import NonFiniteGuard, explain_nonfinite, world_size
from sop_plugin.runtime.masking import BlockMaskGenerator

log = logging.getLogger(__name__)

#: ``method_kwargs`` keys of the solo-learn host (not :class:`SOPConfig` fields), with defaults.
SOLO_ONLY_KEYS: dict[str, Any] = {
    # the teacher temperature warms up over this many epochs (converted to
    # warmup_teacher_temp_steps when training starts; 0 = use warmup_teacher_temp_steps)
    "warmup_teacher_temp_epochs": 0,
    # iBOT-style block masks of the student's global crops (ViT only)
    "mask_prob": 0.5,
    "mask_ratio": [0.1, 0.5],
    "mask_min_block": 4,
    # per-parameter gradient clipping of the student (0 = off), as solo-learn's DINO
    "clip_grad": 0.0,
    # non-finite loss: "stop" (error naming the culprit and the last checkpoint) or "skip"
    # (no update, memories left as they were), giving up after this many skips in a row
    "on_nonfinite": "stop",
    "max_consecutive_skips": 10,
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
    errors = NonFiniteGuard.problems(mk.on_nonfinite, mk.max_consecutive_skips, "method_kwargs.")
    try:
        ratio = tuple(float(r) for r in mk.mask_ratio)
        if len(ratio) != 2:
            raise ValueError(f"mask_ratio={list(ratio)} must be [min, max]")
        BlockMaskGenerator((1, 1), mask_prob=float(mk.mask_prob), ratio=ratio)
    except (TypeError, ValueError) as exc:
        errors.append(f"method_kwargs mask settings: {exc}")
    if int(mk.mask_min_block) < 1:
        errors.append(f"method_kwargs.mask_min_block={mk.mask_min_block} must be >= 1")
    epochs = float(mk.warmup_teacher_temp_epochs)
    if epochs < 0:
        errors.append(f"method_kwargs.warmup_teacher_temp_epochs={epochs:g} must be >= 0")
    if epochs > 0 and int(mk.warmup_teacher_temp_steps) > 0:
        errors.append("set method_kwargs.warmup_teacher_temp_epochs or warmup_teacher_temp_steps, not both")
    if float(mk.clip_grad) < 0:
        errors.append(f"method_kwargs.clip_grad={mk.clip_grad} must be >= 0 (0 disables clipping)")
    large = omegaconf_select(cfg, "data.num_large_crops", None)
    if large is not None and int(large) != 2:
        errors.append(
            f"SOP needs exactly 2 global (large) crops, the config yields {large}: the first "
            "augmentation pipeline's crop_size defines the large crops, give them num_crops "
            "summing to 2 and a different crop_size to the local crops"
        )
    try:
        sop_config_from_cfg(cfg).validate(global_batch_size(cfg))
    except ValueError as exc:  # SOPConfig lists its problems one per "  - " line
        lines = [ln.strip() for ln in str(exc).splitlines()]
        errors.extend([ln[2:] for ln in lines if ln.startswith("- ")] or [str(exc)])
    if errors:
        raise ValueError("invalid SOP config (method_kwargs):\n  - " + "\n  - ".join(errors))


class SOP(BaseMomentumMethod):
    """Self-Organizing visual Prototypes (Silva, Pedrini and Ramirez Rivera, ICML 2025).

    ``method_kwargs`` (all optional, see :data:`METHOD_KWARGS_DEFAULTS`): every
    :class:`~sop_plugin.core.SOPConfig` field under its own name (``dim``,
    ``head_hidden_dim`` and ``head_num_layers`` shape the head shared by [CLS] and patch
    tokens; ``seed`` defaults to the run's ``seed``), plus :data:`SOLO_ONLY_KEYS`:
    ``warmup_teacher_temp_epochs`` (converted to steps), the block masks of the student's
    global crops, ``clip_grad`` and the non-finite loss policy.
    """

    def __init__(self, cfg: omegaconf.DictConfig):
        super().__init__(cfg)
        mk = cfg.method_kwargs
        self.sop_cfg: SOPConfig = sop_config_from_cfg(cfg)
        self.clip_grad = float(mk.clip_grad)
        self.warmup_teacher_temp_epochs = float(mk.warmup_teacher_temp_epochs)
        self.nonfinite = NonFiniteGuard(str(mk.on_nonfinite), int(mk.max_consecutive_skips), "method_kwargs.", "SOP")

        c = self.sop_cfg
        head_kwargs = {"hidden_dim": c.head_hidden_dim, "bottleneck_dim": c.dim, "num_layers": c.head_num_layers}
        self.head = SOPHead(self.features_dim, **head_kwargs)
        self.momentum_head = SOPHead(self.features_dim, **head_kwargs)
        initialize_momentum_params(self.head, self.momentum_head)

        self.objective = SOPObjective(c, koleo=KoLeoLoss())

        is_vit = isinstance(self.backbone, VisionTransformer)
        self.use_mim = is_vit and c.mim_weight > 0
        if not is_vit and c.mim_weight > 0:
            log.warning(
                "SOP-MIM needs patch tokens from a ViT backbone; %s has none, so SOP trains with "
                "the global SOP loss only (method_kwargs.mim_weight=%s is ignored)",
                self.backbone_name,
                c.mim_weight,
            )
        if self.use_mim:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
            self.num_prefix_tokens = int(self.backbone.num_prefix_tokens)
        self._mask_settings = {
            "mask_prob": float(mk.mask_prob),
            "ratio": (float(mk.mask_ratio[0]), float(mk.mask_ratio[1])),
            "min_block": int(mk.mask_min_block),
        }
        # Plain dicts, not registered submodules: the masked wrappers share the backbones'
        # weights, and registering them would store every ViT weight twice per checkpoint.
        self._mask_generators: dict[tuple[int, int], BlockMaskGenerator] = {}
        self._masked_vits: dict[bool, MaskedVisionTransformerTIMM] = {}
        self._pending_masks: list[Tensor] = []

    # ------------------------------------------------------------------ config
    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Fills SOP's ``method_kwargs`` defaults and raises ``ValueError`` on bad values."""
        cfg = super(SOP, SOP).add_and_assert_specific_cfg(cfg)
        for key, default in METHOD_KWARGS_DEFAULTS.items():
            cfg.method_kwargs[key] = omegaconf_select(cfg, f"method_kwargs.{key}", default)
        _check_method_kwargs(cfg)

        # local crops have another size than the global ones: a ViT must then resize its
        # position embedding on the fly (timm's dynamic_img_size; it adds no weights).
        name = str(omegaconf_select(cfg, "backbone.name", ""))
        small = omegaconf_select(cfg, "data.num_small_crops", 0) or 0
        if name.startswith("vit") and small > 0:
            if omegaconf_select(cfg, "backbone.kwargs.dynamic_img_size", None) is None:
                cfg.backbone.kwargs.dynamic_img_size = True
            elif not cfg.backbone.kwargs.dynamic_img_size:
                raise ValueError(
                    "SOP with local crops and a ViT needs backbone.kwargs.dynamic_img_size=True "
                    "(local crops are smaller than the ViT's img_size)"
                )
        return cfg

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """solo-learn's groups plus the SOP head and, with SOP-MIM, the mask token."""
        extra: list[dict[str, Any]] = [{"name": "head", "params": self.head.parameters()}]
        if self.use_mim:
            extra.append({"name": "mask_token", "params": [self.mask_token], "weight_decay": 0.0})
        return super().learnable_params + extra

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        """(backbone, momentum_backbone) from solo-learn plus (head, momentum_head)."""
        return super().momentum_pairs + [(self.head, self.momentum_head)]

    # ------------------------------------------------------------------ masking
    def _masked_vit(self, teacher: bool) -> MaskedVisionTransformerTIMM:
        """lightly's masked view of the (momentum) backbone, made once and kept in sync."""
        vit = self.momentum_backbone if teacher else self.backbone
        wrapper = self._masked_vits.get(teacher)
        if wrapper is None or wrapper.vit is not vit:
            wrapper = MaskedVisionTransformerTIMM(
                vit, mask_token=self.mask_token, weight_initialization="skip", pos_embed_initialization="skip"
            )
            self._masked_vits[teacher] = wrapper
        if wrapper.mask_token is not self.mask_token:
            wrapper.mask_token = self.mask_token
        return wrapper

    def _tokens(self, X: Tensor, mask: Tensor | None, teacher: bool) -> Tensor:
        """All output tokens [B, prefix + N, D]; ``mask`` bool [B, N] over patches."""
        full_mask = None
        if mask is not None:
            prefix = mask.new_zeros(mask.shape[0], self.num_prefix_tokens)
            full_mask = torch.cat([prefix, mask], dim=1)
        return self._masked_vit(teacher).encode(X, mask=full_mask)

    def patch_grid(self, X: Tensor) -> tuple[int, int]:
        """The ViT's patch grid (H, W) for images like ``X``."""
        ph, pw = self.backbone.patch_embed.patch_size
        return X.shape[-2] // ph, X.shape[-1] // pw

    def _draw_masks(self, views: Sequence[Tensor], batch_idx: int) -> list[Tensor]:
        """One bool [B, N] mask per global view; seeded by (seed, step, batch, rank)."""
        step = int(self.trainer.global_step) if self._trainer is not None else 0
        seed = mix_seed(self.sop_cfg.seed, step, batch_idx, rank_and_world()[0])
        gen = torch.Generator().manual_seed(seed)
        masks = []
        for x in views:
            grid = self.patch_grid(x)
            if grid not in self._mask_generators:
                self._mask_generators[grid] = BlockMaskGenerator(grid, **self._mask_settings)
            masks.append(self._mask_generators[grid](x.shape[0], gen).to(x.device))
        return masks

    # ------------------------------------------------------------------ forwards
    def _student_forward(self, X: Tensor, mask: Tensor | None) -> dict[str, Any]:
        """Student on a global crop: feats, logits, z ([CLS] head) and z_patches (SOP-MIM)."""
        if not self.no_channel_last:
            X = X.to(memory_format=torch.channels_last)
        out: dict[str, Any] = {}
        if self.use_mim:
            tokens = self._tokens(X, mask, teacher=False)
            feats = self.backbone.forward_head(tokens)
            out["z_patches"] = self.head(tokens[:, self.num_prefix_tokens :])
        else:
            feats = self.backbone(X)
        out.update({"feats": feats, "logits": self.classifier(feats.detach()), "z": self.head(feats)})
        return out

    def forward(self, X: Tensor) -> dict[str, Any]:
        """Unmasked student (validation, feature extraction): feats, logits and z."""
        out = super().forward(X)
        out["z"] = self.head(out["feats"])
        return out

    def base_training_step(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        """Masked student on one global crop plus solo-learn's online-classifier loss."""
        mask = self._pending_masks.pop(0) if self._pending_masks else None
        out = self._student_forward(X, mask)
        logits = out["logits"]
        loss = F.cross_entropy(logits, targets, ignore_index=-1)
        acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
        out.update({"loss": loss, "acc1": acc1, "acc5": acc5})
        return out

    def multicrop_forward(self, X: Tensor) -> dict[str, Any]:
        """Student on a local crop (never masked): feats and z."""
        out = super().multicrop_forward(X)
        out["z"] = self.head(out["feats"])
        return out

    @torch.no_grad()
    def momentum_forward(self, X: Tensor) -> dict[str, Any]:
        """Teacher on an unmasked global crop; head outputs only while training."""
        if self.use_mim:
            if not self.no_channel_last:
                X = X.to(memory_format=torch.channels_last)
            tokens = self._tokens(X, None, teacher=True)
            out: dict[str, Any] = {"feats": self.momentum_backbone.forward_head(tokens)}
            if self.training:
                out["z_patches"] = self.momentum_head(tokens[:, self.num_prefix_tokens :])
        else:
            out = super().momentum_forward(X)
        if self.training:
            out["z"] = self.momentum_head(out["feats"])
        return out

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        """Converts the teacher-temperature warm-up from epochs to optimisation steps, and puts
        the EMA coefficient where a resumed run left it.

        solo-learn keeps tau in a plain attribute that checkpoints do not carry, so a resumed
        run would make its first EMA update with the *initial* tau; recomputing it from the
        restored global step makes the resume exact.
        """
        super().on_train_start()
        if self.trainer.global_step > 0:
            self.momentum_updater.update_tau(
                cur_step=self.trainer.global_step, max_steps=self.trainer.estimated_stepping_batches
            )
        epochs = self.warmup_teacher_temp_epochs
        if epochs > 0:
            steps_per_epoch = self.trainer.estimated_stepping_batches / max(1, self.max_epochs)
            self.objective.cfg.warmup_teacher_temp_steps = int(round(epochs * steps_per_epoch))

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """solo-learn's shared step (classifiers, kNN, teacher) plus the SOP objective."""
        _, X, _ = batch
        X = [X] if isinstance(X, Tensor) else X
        masks = self._draw_masks(X[: self.num_large_crops], batch_idx) if self.use_mim else []
        self.nonfinite.snapshot(self.objective)
        self._pending_masks = list(masks)
        try:
            out = super().training_step(batch, batch_idx)
        finally:
            self._pending_masks = []

        patches = (None, None, None)
        if self.use_mim:
            patches = tuple(torch.stack(out[k]) for k in ("z_patches", "momentum_z_patches"))
            patches += (torch.stack(masks),)
        step = int(self.trainer.global_step)
        result = self.objective(torch.stack(out["z"]), torch.stack(out["momentum_z"]), *patches, step=step)
        total = result.loss + out["loss"]
        if not self.nonfinite.check(total, step, lambda: self._explain_nonfinite(out["loss"]), self._checkpoint_hint):
            self.log("train_sop_skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return total  # its gradients are dropped in on_before_optimizer_step
        metrics = {
            "train_sop_loss": result.loss,
            "train_sop_cls_loss": result.cls_loss,
            "train_sop_mim_loss": result.mim_loss,
        }
        if self.sop_cfg.koleo_weight > 0:
            metrics["train_sop_koleo_loss"] = result.koleo_loss
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        extras = {"sop_teacher_temp": result.teacher_temp}
        extras.update({k if k.startswith("sop_") else f"sop_{k}": v for k, v in result.stats.items()})
        self.log_dict(extras, on_epoch=False, on_step=True)
        return total

    # ------------------------------------------------------------------ non-finite losses
    @property
    def skipped_steps(self) -> int:
        """Steps dropped at a non-finite loss (``method_kwargs.on_nonfinite=skip``)."""
        return self.nonfinite.skipped_steps

    def _explain_nonfinite(self, solo_loss: Tensor) -> str:
        sop = explain_nonfinite(self.objective)
        if bool(torch.isfinite(solo_loss.detach()).all()):
            return sop
        return f"solo-learn's online classifier loss is {float(solo_loss):.4g}; SOP: {sop}"

    def _checkpoint_hint(self) -> str:
        """The newest checkpoint solo-learn's Checkpointer wrote in this run, if any."""
        for callback in self.trainer.callbacks:
            path = getattr(callback, "last_ckpt", None)
            if path:
                return f"last good checkpoint: {path} (resume with ++resume_from_checkpoint='{path}' after the fix)"
        return "no checkpoint written yet in this run"

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step updates nothing: parameters without gradients are left alone."""
        self.nonfinite.drop_gradients(optimizer)

    def on_after_backward(self) -> None:
        """Clips each student parameter's gradient norm to ``clip_grad`` (when > 0)."""
        if self.clip_grad <= 0:
            return
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        if self.use_mim:
            params.append(self.mask_token)
        for p in params:
            if p.grad is not None:
                scale = self.clip_grad / (p.grad.detach().norm(2) + 1e-6)
                p.grad.mul_(scale.clamp(max=1.0))
