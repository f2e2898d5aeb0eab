"""The solo-learn host of :mod:`sop_plugin.methods`: a block-masked ViT student feeding one method.

:class:`MaskedMomentumMethod` sits between solo-learn's ``BaseMomentumMethod`` and a method of
:mod:`sop_plugin.methods` (SOP, iBOT): the same heads, loss, schedules and masking policy the
benchmark trains. With a ViT backbone the student's global crops are masked block-wise
(:class:`~sop_plugin.runtime.masking.BlockMaskGenerator`) through lightly's
``MaskedVisionTransformerTIMM`` around solo-learn's own timm ViT, and the method receives the
[CLS] and patch tokens of student and teacher. Without patch tokens (ResNet, ...) the patch
objective is off with a warning. ``method_kwargs`` holds the method's own fields (the one
vocabulary of both hosts) plus :data:`SHARED_KEYS`; epoch counts are converted to steps once,
when training starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import omegaconf
import torch
import torch.nn.functional as F
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from solo.methods.base import BaseMomentumMethod
from solo.utils.metrics import accuracy_at_k
from solo.utils.misc import omegaconf_select
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sop_plugin.core import SOPConfig, mix_seed, rank_and_world
from sop_plugin.methods import Method, Tokens, build_method, method_class
from sop_plugin.runtime import NonFiniteGuard, clip_per_parameter
from sop_plugin.runtime.masking import BlockMaskGenerator
from sop_plugin.solo.settings import (
    SHARED_KEYS,
    allow_local_crops,
    fill_method_kwargs,
    global_batch_size,
    method_settings,
    shared_problems,
    solo_method_config,
)

log = logging.getLogger(__name__)


class MaskedMomentumMethod(BaseMomentumMethod):
    """solo-learn momentum method running :attr:`method_name` of :mod:`sop_plugin.methods` (see the module docstring).

    Subclasses set :attr:`method_name`, :attr:`display_name`, :attr:`METHOD_KWARGS_DEFAULTS` and
    the texts of the warning without a ViT; the heads are the method's (``head`` and
    ``momentum_head`` name them for solo-learn), the loss is the method's.
    """

    method_name: ClassVar[str]
    display_name: ClassVar[str]
    METHOD_KWARGS_DEFAULTS: ClassVar[dict[str, Any]]
    patch_objective = "the patch objective"
    fallback = "the [CLS] objective"

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        super().__init__(cfg)  # calls add_and_assert_specific_cfg: defaults filled, values checked
        mk = cfg.method_kwargs
        config, masks = method_settings(cfg, self.method_name, self.host_keys())
        is_vit = isinstance(self.backbone, VisionTransformer)
        if masks is not None and not is_vit:
            log.warning(
                "%s needs patch tokens from a ViT backbone; %s has none, so %s trains with %s only "
                "(method_kwargs.mim_weight=%s is ignored)",
                self.patch_objective,
                self.backbone_name,
                self.display_name,
                self.fallback,
                mk.get("mim_weight"),
            )
            masks = None
        #: the method's heads, loss and schedules: the same code the benchmark trains
        self.method: Method = build_method(self.method_name, self.features_dim, config, masks)
        self.clip_grad = float(mk.clip_grad)
        self.nonfinite = NonFiniteGuard(
            str(mk.on_nonfinite), int(mk.max_consecutive_skips), "method_kwargs.", name=self.display_name
        )
        self.use_mim = self.method.uses_masks
        if self.use_mim:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
            self.num_prefix_tokens = int(self.backbone.num_prefix_tokens)
        self.mask_seed = int(omegaconf_select(cfg, "seed", 0) or 0)
        # Plain dicts, not registered submodules: the masked wrappers share the backbones'
        # weights, and registering them would store every ViT weight twice per checkpoint.
        self._mask_generators: dict[tuple[int, int], BlockMaskGenerator] = {}
        self._masked_vits: dict[bool, MaskedVisionTransformerTIMM] = {}
        self._pending_masks: list[Tensor] = []

    @classmethod
    def host_keys(cls) -> list[str]:
        """``method_kwargs`` keys that are the host's, not the method config's."""
        fields = set(cls.METHOD_KWARGS_DEFAULTS) - set(SHARED_KEYS)
        own = {f.name for f in dataclasses.fields(method_class(cls.method_name).config_class)}
        return sorted(set(SHARED_KEYS) | (fields - own))

    @classmethod
    def fill_and_check(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Fill the missing ``method_kwargs`` from the defaults and raise ``ValueError`` listing every bad value."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        if omegaconf_select(cfg, "method_kwargs", None) is None:
            cfg.method_kwargs = {}
        fill_method_kwargs(cfg, cls.METHOD_KWARGS_DEFAULTS)
        errors = shared_problems(cfg, cls.display_name)
        try:
            config = solo_method_config(cfg, cls.method_name, cls.host_keys())  # masks: shared_problems
            if isinstance(config, SOPConfig):
                config.validate(global_batch_size(cfg))
        except ValueError as exc:  # the configs list their problems one per "  - " line
            lines = [ln.strip() for ln in str(exc).splitlines()]
            errors.extend([ln[2:] for ln in lines if ln.startswith("- ")] or [str(exc)])
        if errors:
            raise ValueError(f"invalid {cls.display_name} config (method_kwargs):\n  - " + "\n  - ".join(errors))
        allow_local_crops(cfg, cls.display_name)
        return cfg

    def train(self, mode: bool = True) -> MaskedMomentumMethod:
        """Train mode for the student; the teacher backbone stays deterministic (eval: no drop path).

        The method keeps its own teacher heads in eval mode (:meth:`sop_plugin.methods.Method.train`).
        """
        super().train(mode)
        self.momentum_backbone.eval()
        return self

    @property
    def head(self) -> nn.Module:
        """The student head (the method's), under solo-learn's name."""
        return self.method.student_head

    @property
    def momentum_head(self) -> nn.Module:
        """The teacher head (the method's), under solo-learn's name."""
        return self.method.teacher_head

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """solo-learn's groups plus the method's parameters and, with patch tokens, the mask token (no weight decay)."""
        extra = [{"name": "head", "params": [p for p in self.method.parameters() if p.requires_grad]}]
        if self.use_mim:
            extra.append({"name": "mask_token", "params": [self.mask_token], "weight_decay": 0.0})
        return super().learnable_params + extra

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        """(backbone, momentum_backbone) from solo-learn plus the method's (student, teacher) pairs."""
        return super().momentum_pairs + self.method.momentum_pairs()

    def forward(self, X: Tensor) -> dict[str, Any]:
        """Unmasked student (validation, feature extraction): feats, logits and ``z`` (the head's output)."""
        out = super().forward(X)
        out["z"] = self.head(out["feats"])
        return out

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

    def patch_grid(self, X: Tensor) -> tuple[int, int]:
        """The ViT's patch grid (H, W) for images like ``X``."""
        ph, pw = self.backbone.patch_embed.patch_size
        return X.shape[-2] // ph, X.shape[-1] // pw

    def _draw_masks(self, views: Sequence[Tensor], batch_idx: int) -> list[Tensor]:
        """One bool [B, N] mask per global view; seeded by (seed, step, batch, rank)."""
        masks_cfg = self.method.masks
        assert masks_cfg is not None
        gen = torch.Generator().manual_seed(
            mix_seed(self.mask_seed, self.current_step(), batch_idx, rank_and_world()[0])
        )
        masks = []
        for x in views:
            grid = self.patch_grid(x)
            if grid not in self._mask_generators:
                self._mask_generators[grid] = BlockMaskGenerator(
                    grid, masks_cfg.prob, masks_cfg.ratio, masks_cfg.min_block
                )
            masks.append(self._mask_generators[grid](x.shape[0], gen).to(x.device))
        return masks

    def current_step(self) -> int:
        """The optimisation step (0 outside a fit)."""
        return int(self.trainer.global_step) if self._trainer is not None else 0

    def encode(self, X: Tensor, mask: Tensor | None = None, teacher: bool = False) -> tuple[Tensor, Tensor | None]:
        """(features [B, D], patch tokens [B, N, D] or None) of the (momentum) backbone; ``mask`` bool [B, N]."""
        if not self.no_channel_last:
            X = X.to(memory_format=torch.channels_last)
        if not self.use_mim:
            return (self.momentum_backbone if teacher else self.backbone)(X), None
        full_mask = None
        if mask is not None:
            full_mask = torch.cat([mask.new_zeros(mask.shape[0], self.num_prefix_tokens), mask], dim=1)
        tokens = self._masked_vit(teacher).encode(X, mask=full_mask)
        vit = self.momentum_backbone if teacher else self.backbone
        return vit.forward_head(tokens), tokens[:, self.num_prefix_tokens :]

    # ------------------------------------------------------------------ solo-learn hooks
    def base_training_step(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        """Masked student on one global crop plus solo-learn's online-classifier loss."""
        feats, patches = self.encode(X, self._pending_masks.pop(0) if self._pending_masks else None)
        logits = self.classifier(feats.detach())
        loss = F.cross_entropy(logits, targets, ignore_index=-1)
        acc1, acc5 = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
        out = {"feats": feats, "logits": logits, "loss": loss, "acc1": acc1, "acc5": acc5}
        if patches is not None:
            out["patches"] = patches
        return out

    @torch.no_grad()
    def momentum_forward(self, X: Tensor) -> dict[str, Any]:
        """Teacher on an unmasked global crop: features, ``z`` (the teacher head's output) and, while training, patch tokens."""
        feats, patches = self.encode(X, teacher=True)
        out = {"feats": feats, "z": self.momentum_head(feats)}
        if patches is not None and self.training:
            out["patches"] = patches
        return out

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """solo-learn's shared step (classifiers, kNN, teacher) with masked global crops, then the method's loss."""
        X = batch[1] if not isinstance(batch[1], Tensor) else [batch[1]]
        masks = self._draw_masks(X[: self.num_large_crops], batch_idx) if self.use_mim else []
        self.nonfinite.snapshot(self.method)
        self.method.observe_batch(batch[0])
        self._pending_masks = list(masks)
        try:
            out = BaseMomentumMethod.training_step(self, batch, batch_idx)
        finally:
            self._pending_masks = []
        step = self.current_step()
        tokens = Tokens(torch.stack(out["feats"]), torch.stack(out["momentum_feats"]))
        if self.use_mim:
            tokens.student_patches = torch.stack(out["patches"])
            tokens.teacher_patches = torch.stack(out["momentum_patches"])
            tokens.masks = torch.stack(masks)
        result = self.method(tokens, step)
        total = result.loss + out["loss"]
        if not self.finish_step(total, lambda: self._explain_nonfinite(result, out["loss"])):
            return total  # its gradients are dropped in on_before_optimizer_step
        name = self.method_name
        metrics = {f"train_{name}_loss": result.loss}
        metrics.update({f"train_{name}_{k[5:]}_loss": v for k, v in result.logs.items() if k.startswith("loss_")})
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        extras = {
            k if k.startswith(f"{name}_") else f"{name}_{k}": v
            for k, v in result.logs.items()
            if not k.startswith("loss_")
        }
        self.log_dict(extras, on_epoch=False, on_step=True)
        return total

    def _explain_nonfinite(self, result: Any, solo_loss: Tensor) -> str:
        """The method's explanation, and solo-learn's online classifier loss when it is the culprit."""
        own = self.method.explain_nonfinite(result)
        if bool(torch.isfinite(solo_loss.detach()).all()):
            return own
        return f"solo-learn's online classifier loss is {float(solo_loss):.4g}; {self.display_name}: {own}"

    def finish_step(self, total: Tensor, explain: Any) -> bool:
        """False when the step's loss is non-finite and skipped; raises under ``on_nonfinite=stop``."""
        ok = self.nonfinite.check(total, self.current_step(), explain, self._checkpoint_hint)
        if not ok:
            self.log("train_skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        return ok

    @property
    def skipped_steps(self) -> int:
        """Steps dropped at a non-finite loss (``method_kwargs.on_nonfinite=skip``)."""
        return self.nonfinite.skipped_steps

    def _checkpoint_hint(self) -> str:
        """The newest checkpoint solo-learn's Checkpointer wrote in this run, if any."""
        for callback in self.trainer.callbacks:
            path = getattr(callback, "last_ckpt", None)
            if path:
                return f"last good checkpoint: {path} (resume with ++resume_from_checkpoint='{path}' after the fix)"
        return "no checkpoint written yet in this run"

    def steps_for_epochs(self, epochs: float) -> int:
        """Optimisation steps in ``epochs`` epochs of this run (rounded up: a positive count is never 0 steps)."""
        batches = self.trainer.num_training_batches
        if math.isinf(batches):  # an iterable without a length: spread the run's steps over max_epochs
            per_epoch = self.trainer.estimated_stepping_batches / max(1, self.max_epochs)
        else:
            per_epoch = batches // max(1, self.trainer.accumulate_grad_batches)
        return math.ceil(epochs * max(1, per_epoch))

    def on_train_start(self) -> None:
        """Converts the epoch counts of ``method_kwargs`` to steps, and puts the EMA coefficient where a resumed run left it.

        solo-learn keeps tau in a plain attribute that checkpoints do not carry, so a resumed
        run would make its first EMA update with the *initial* tau; recomputing it from the
        restored global step makes the resume exact.
        """
        super().on_train_start()
        mk = self.cfg.method_kwargs
        config = self.method.cfg
        warmup = float(mk.warmup_teacher_temp_epochs)
        freeze = float(omegaconf_select(self.cfg, "method_kwargs.freeze_last_layer_epochs", 0) or 0)
        self.method.set_step_schedule(
            self.steps_for_epochs(warmup) if warmup > 0 else config.warmup_teacher_temp_steps,
            self.steps_for_epochs(freeze) if freeze > 0 else getattr(config, "freeze_last_layer_steps", 0),
        )
        if self.trainer.global_step > 0:
            self.momentum_updater.update_tau(
                cur_step=self.trainer.global_step, max_steps=self.trainer.estimated_stepping_batches
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step updates nothing: parameters without gradients are left alone."""
        self.nonfinite.drop_gradients(optimizer)

    def on_after_backward(self) -> None:
        """The method's own hook (last-layer freeze), then each student parameter's gradient norm clipped to ``clip_grad``."""
        self.method.after_backward(self.current_step())
        student = [*self.backbone.parameters(), *self.method.parameters(), *([self.mask_token] if self.use_mim else [])]
        clip_per_parameter(student, self.clip_grad)
