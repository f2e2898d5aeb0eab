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
``method_kwargs``; see :data:`METHOD_KWARGS_DEFAULTS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import omegaconf
import torch
import torch.nn.functional as F
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from omegaconf import ListConfig
from omegaconf.errors import OmegaConfBaseException
from solo.methods.base import BaseMomentumMethod
from solo.utils.metrics import accuracy_at_k
from solo.utils.misc import omegaconf_select
from solo.utils.momentum import initialize_momentum_params
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sop_plugin.core import BlockMaskGenerator, SOPConfig, SOPHead, SOPObjective
from sop_plugin.training.nonfinite import (
    POLICIES,
    NonFiniteLossError,
    finite_on_all_ranks,
    restore_buffers,
    snapshot_buffers,
)

log = logging.getLogger(__name__)

_SOP_DEFAULTS = SOPConfig()

#: ``method_kwargs`` key -> the :class:`SOPConfig` field it sets. Temperatures use the
#: names of solo-learn's DINO so that matched DINO/SOP configs read the same.
OBJECTIVE_KEYS: dict[str, str] = {
    "proj_output_dim": "dim",
    "class_memory_size": "class_memory_size",
    "patch_memory_size": "patch_memory_size",
    "class_num_sets": "class_num_sets",
    "class_num_anchors": "class_num_anchors",
    "class_num_supports": "class_num_supports",
    "patch_num_sets": "patch_num_sets",
    "patch_num_anchors": "patch_num_anchors",
    "patch_num_supports": "patch_num_supports",
    "smoothing": "smoothing",
    "student_temperature": "student_temp",
    "teacher_temperature": "teacher_temp",
    "warmup_teacher_temperature": "warmup_teacher_temp",
    "mim_weight": "mim_weight",
    "koleo_weight": "koleo_weight",
    "anchor_selection": "anchor_selection",
    "retrieval": "retrieval",
}

#: Every ``method_kwargs`` key SOP understands, with its default. ``seed: None`` means the
#: run's top-level ``seed``.
METHOD_KWARGS_DEFAULTS: dict[str, Any] = {
    # head shared by [CLS] and patch tokens
    "proj_hidden_dim": 2048,
    "proj_num_layers": 3,
    # objective (SOPConfig)
    **{key: getattr(_SOP_DEFAULTS, field) for key, field in OBJECTIVE_KEYS.items()},
    "warmup_teacher_temperature_epochs": 0,
    "seed": None,
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


def num_devices(devices: Any) -> int:
    """How many devices a Lightning ``devices`` value names (1 when it cannot tell)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return max(1, len(devices))
    if isinstance(devices, int):
        return max(1, devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text.isdigit():
            return max(1, int(text))
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
    return 1


def global_batch_size(cfg: omegaconf.DictConfig) -> int | None:
    """Per-device batch size x devices x nodes, or None when the config does not say."""
    batch = omegaconf_select(cfg, "optimizer.batch_size", None)
    if batch is None:
        return None
    devices = omegaconf_select(cfg, "devices", 1)
    nodes = omegaconf_select(cfg, "num_nodes", 1) or 1
    return int(batch) * num_devices(devices) * int(nodes)


def sop_config_from_cfg(cfg: omegaconf.DictConfig) -> SOPConfig:
    """The :class:`SOPConfig` described by ``cfg.method_kwargs`` (defaults already filled)."""
    mk = cfg.method_kwargs
    values = {field: mk[key] for key, field in OBJECTIVE_KEYS.items()}
    seed = mk.seed if mk.seed is not None else omegaconf_select(cfg, "seed", 0)
    values["seed"] = int(seed if seed is not None else 0)
    for field in ("dim", "class_memory_size", "patch_memory_size", "class_num_sets",
                  "class_num_anchors", "class_num_supports", "patch_num_sets",
                  "patch_num_anchors", "patch_num_supports"):  # fmt: skip
        values[field] = int(values[field])
    for field in ("smoothing", "student_temp", "teacher_temp", "warmup_teacher_temp",
                  "mim_weight", "koleo_weight"):  # fmt: skip
        values[field] = float(values[field])
    values["anchor_selection"] = str(values["anchor_selection"])
    values["retrieval"] = str(values["retrieval"])
    return SOPConfig(**values)


def _check_method_kwargs(cfg: omegaconf.DictConfig) -> None:
    """Raise ``ValueError`` listing every wrong SOP setting (typos included)."""
    mk = cfg.method_kwargs
    errors: list[str] = []
    unknown = sorted(set(mk.keys()) - set(METHOD_KWARGS_DEFAULTS))
    if unknown:
        errors.append(
            f"unknown method_kwargs {unknown} for method 'sop'; known keys: "
            f"{sorted(METHOD_KWARGS_DEFAULTS)}"
        )
    if not 0.0 <= float(mk.mask_prob) <= 1.0:
        errors.append(f"method_kwargs.mask_prob={mk.mask_prob} must be in [0, 1]")
    ratio = list(mk.mask_ratio) if isinstance(mk.mask_ratio, (list, tuple, ListConfig)) else None
    if ratio is None or len(ratio) != 2 or not 0.0 <= float(ratio[0]) <= float(ratio[1]) < 1.0:
        errors.append(
            f"method_kwargs.mask_ratio={mk.mask_ratio} must be [min, max] with 0 <= min <= max < 1"
        )
    if int(mk.mask_min_block) < 1:
        errors.append(f"method_kwargs.mask_min_block={mk.mask_min_block} must be >= 1")
    if float(mk.warmup_teacher_temperature_epochs) < 0:
        errors.append(
            f"method_kwargs.warmup_teacher_temperature_epochs={mk.warmup_teacher_temperature_epochs} "
            "must be >= 0"
        )
    if mk.on_nonfinite not in POLICIES:
        errors.append(f"method_kwargs.on_nonfinite={mk.on_nonfinite!r}; choose one of {list(POLICIES)}")
    if int(mk.max_consecutive_skips) < 1:
        errors.append(f"method_kwargs.max_consecutive_skips={mk.max_consecutive_skips} must be >= 1")
    if float(mk.clip_grad) < 0:
        errors.append(f"method_kwargs.clip_grad={mk.clip_grad} must be >= 0 (0 disables clipping)")
    for key in ("proj_hidden_dim", "proj_num_layers"):
        if int(mk[key]) < 1:
            errors.append(f"method_kwargs.{key}={mk[key]} must be >= 1")
    large = omegaconf_select(cfg, "data.num_large_crops", None)
    if large is not None and int(large) != 2:
        errors.append(
            f"SOP needs exactly 2 global (large) crops, the config yields {large}: the first "
            "augmentation pipeline's crop_size defines the large crops, give them num_crops "
            "summing to 2 and a different crop_size to the local crops"
        )
    if not unknown:
        try:
            sop_config_from_cfg(cfg).validate(global_batch_size(cfg))
        except ValueError as exc:  # SOPConfig lists its problems one per "  - " line
            lines = [ln.strip() for ln in str(exc).splitlines()]
            items = [ln[2:] for ln in lines if ln.startswith("- ")]
            errors.extend(items or [str(exc)])
        except (TypeError, OmegaConfBaseException) as exc:
            errors.append(f"malformed SOP setting: {exc}")
    if errors:
        raise ValueError("invalid SOP config (method_kwargs):\n  - " + "\n  - ".join(errors))


class SOP(BaseMomentumMethod):
    """Self-Organizing visual Prototypes (Silva, Pedrini and Ramirez Rivera, ICML 2025).

    Extra cfg settings (``method_kwargs``, all optional, see
    :data:`METHOD_KWARGS_DEFAULTS`):
        proj_hidden_dim, proj_output_dim, proj_num_layers: the shared SOP head
            (hidden width, bottleneck = embedding/memory dimension, depth).
        class_memory_size, class_num_sets, class_num_anchors, class_num_supports,
        patch_memory_size, patch_num_sets, patch_num_anchors, patch_num_supports,
        smoothing, mim_weight, koleo_weight, anchor_selection, retrieval: the
            :class:`~sop_plugin.core.SOPConfig` fields of the same name.
        student_temperature, teacher_temperature, warmup_teacher_temperature: the
            temperatures; the teacher's warms up linearly over
            ``warmup_teacher_temperature_epochs`` epochs (converted to steps).
        seed: seed of the SOP sets and masks (default: the run's ``seed``).
        mask_prob, mask_ratio, mask_min_block: block masks of the student's global crops.
        clip_grad: per-parameter gradient-norm clip of the student (0 = off).
        on_nonfinite, max_consecutive_skips: a non-finite loss stops training with a
            message naming the culprit (``stop``), or the step is dropped (``skip``).
    """

    def __init__(self, cfg: omegaconf.DictConfig):
        super().__init__(cfg)
        mk = cfg.method_kwargs
        self.sop_cfg: SOPConfig = sop_config_from_cfg(cfg)
        self.clip_grad = float(mk.clip_grad)
        self.warmup_teacher_temperature_epochs = float(mk.warmup_teacher_temperature_epochs)
        self.on_nonfinite = str(mk.on_nonfinite)
        self.max_consecutive_skips = int(mk.max_consecutive_skips)
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self._skip = False

        head_kwargs = {
            "in_dim": self.features_dim,
            "hidden_dim": int(mk.proj_hidden_dim),
            "bottleneck_dim": self.sop_cfg.dim,
            "num_layers": int(mk.proj_num_layers),
        }
        self.head = SOPHead(**head_kwargs)
        self.momentum_head = SOPHead(**head_kwargs)
        initialize_momentum_params(self.head, self.momentum_head)

        self.objective = SOPObjective(self.sop_cfg)

        is_vit = isinstance(self.backbone, VisionTransformer)
        self.use_mim = is_vit and self.sop_cfg.mim_weight > 0
        if not is_vit and self.sop_cfg.mim_weight > 0:
            log.warning(
                "SOP-MIM needs patch tokens from a ViT backbone; %s has none, so SOP trains with "
                "the global SOP loss only (method_kwargs.mim_weight=%s is ignored)",
                self.backbone_name,
                self.sop_cfg.mim_weight,
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
                vit,
                mask_token=self.mask_token,
                weight_initialization="skip",
                pos_embed_initialization="skip",
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
        rank = int(self.global_rank) if self._trainer is not None else 0
        seed = ((self.sop_cfg.seed * 1_000_003 + step) * 65_537 + batch_idx) * 4_099 + rank
        gen = torch.Generator().manual_seed(seed % (2**63))
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
        out.update(
            {"feats": feats, "logits": self.classifier(feats.detach()), "z": self.head(feats)}
        )
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
        epochs = self.warmup_teacher_temperature_epochs
        if epochs > 0:
            steps_per_epoch = self.trainer.estimated_stepping_batches / max(1, self.max_epochs)
            self.objective.cfg.warmup_teacher_temp_steps = int(round(epochs * steps_per_epoch))

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """solo-learn's shared step (classifiers, kNN, teacher) plus the SOP objective."""
        _, X, _ = batch
        X = [X] if isinstance(X, Tensor) else X
        masks = self._draw_masks(X[: self.num_large_crops], batch_idx) if self.use_mim else []
        snapshot = snapshot_buffers(self.objective) if self.on_nonfinite == "skip" else None
        self._pending_masks = list(masks)
        try:
            out = super().training_step(batch, batch_idx)
        finally:
            self._pending_masks = []

        student_patches = teacher_patches = stacked_masks = None
        if self.use_mim:
            student_patches = torch.stack(out["z_patches"])
            teacher_patches = torch.stack(out["momentum_z_patches"])
            stacked_masks = torch.stack(masks)
        result = self.objective(
            torch.stack(out["z"]),
            torch.stack(out["momentum_z"]),
            student_patches,
            teacher_patches,
            stacked_masks,
            step=int(self.trainer.global_step),
        )
        total = result.loss + out["loss"]
        self._skip = not finite_on_all_ranks(total)
        if self._skip:
            self._on_nonfinite(total, out["loss"], snapshot)
            return total  # its gradients are dropped in on_before_optimizer_step
        self._consecutive_skips = 0
        metrics = {
            "train_sop_loss": result.loss,
            "train_sop_cls_loss": result.cls_loss,
            "train_sop_mim_loss": result.mim_loss,
        }
        if self.sop_cfg.koleo_weight > 0:
            metrics["train_sop_koleo_loss"] = result.koleo_loss
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        extras = {"sop_teacher_temp": result.teacher_temp}
        extras.update(
            {k if k.startswith("sop_") else f"sop_{k}": v for k, v in result.stats.items()}
        )
        self.log_dict(extras, on_epoch=False, on_step=True)
        return total

    # ------------------------------------------------------------------ non-finite losses
    def _last_checkpoint(self) -> str | None:
        """The newest checkpoint solo-learn's Checkpointer wrote in this run, if any."""
        for callback in self.trainer.callbacks:
            path = getattr(callback, "last_ckpt", None)
            if path:
                return str(path)
        return None

    def _on_nonfinite(self, total: Tensor, solo_loss: Tensor, snapshot: dict[str, Tensor] | None) -> None:
        """Stop with a message naming the culprit, or (``skip``) undo the memories' update."""
        step = int(self.trainer.global_step)
        if bool(torch.isfinite(total.detach()).all()):
            what = "on another DDP rank (see that rank's message)"
        elif not bool(torch.isfinite(solo_loss.detach()).all()):
            what = (f"solo-learn's online classifier loss is {float(solo_loss):.4g}; SOP: "
                    f"{self.objective.explain_nonfinite()}")
        else:
            what = self.objective.explain_nonfinite()
        ckpt = self._last_checkpoint()
        hint = (f"last good checkpoint: {ckpt} (resume with ++resume_from_checkpoint='{ckpt}' after the fix)"
                if ckpt else "no checkpoint written yet in this run")
        where = f"non-finite SOP loss at step {step}: {what}; {hint}"
        if self.on_nonfinite != "skip":
            raise NonFiniteLossError(f"{where}. Fix the cause or set method_kwargs.on_nonfinite=skip")
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteLossError(f"{where}. {self._consecutive_skips} consecutive steps were already "
                                     "skipped (method_kwargs.max_consecutive_skips): training is not recovering")
        assert snapshot is not None
        restore_buffers(self.objective, snapshot)
        self.skipped_steps += 1
        self._consecutive_skips += 1
        log.warning("method_kwargs.on_nonfinite=skip: skipped step %d (%d so far): %s", step,
                    self.skipped_steps, where)
        self.log("train_sop_skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step updates nothing: parameters without gradients are left alone."""
        if self._skip:
            optimizer.zero_grad(set_to_none=True)

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
