"""What SOP and iBOT share inside solo-learn: a block-masked ViT student, the non-finite policy, clipping.

:class:`MaskedMomentumMethod` sits between solo-learn's ``BaseMomentumMethod`` and a method with
a masked-image objective. With a ViT backbone the student's global crops are masked block-wise
(:class:`~sop_plugin.runtime.masking.BlockMaskGenerator`) through lightly's
``MaskedVisionTransformerTIMM`` around solo-learn's own timm ViT, and the training outputs carry
the patch tokens (``patches`` for the student's global crops, ``momentum_patches`` for the
teacher's). Without patch tokens (ResNet, ...) the patch objective is off with a warning. The
subclass adds its heads and loss in ``training_step`` and ends it with :meth:`finish_step`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import omegaconf
import torch
import torch.nn.functional as F
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from solo.methods.base import BaseMomentumMethod
from solo.utils.metrics import accuracy_at_k
from solo.utils.misc import omegaconf_select
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sop_plugin.core import mix_seed, rank_and_world
from sop_plugin.runtime import NonFiniteGuard
from sop_plugin.runtime.masking import BlockMaskGenerator

log = logging.getLogger(__name__)

#: ``method_kwargs`` both methods take, with their defaults.
SHARED_KEYS: dict[str, Any] = {
    # iBOT-style block masks of the student's global crops (ViT only)
    "mask_prob": 0.5,
    "mask_ratio": [0.1, 0.5],
    "mask_min_block": 4,
    # per-parameter gradient-norm clipping of the student (0 = off)
    "clip_grad": 0.0,
    # non-finite loss: "stop" (error naming the culprit and the last checkpoint) or "skip"
    # (no update, buffers left as they were), giving up after this many skips in a row
    "on_nonfinite": "stop",
    "max_consecutive_skips": 10,
}


def fill_method_kwargs(cfg: omegaconf.DictConfig, defaults: Mapping[str, Any]) -> None:
    """Fill the missing ``method_kwargs`` from ``defaults`` (in place)."""
    for key, default in defaults.items():
        cfg.method_kwargs[key] = omegaconf_select(cfg, f"method_kwargs.{key}", default)


def shared_problems(cfg: omegaconf.DictConfig, method: str) -> list[str]:
    """What is wrong with the :data:`SHARED_KEYS` settings and the crops, one message each."""
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
    if float(mk.clip_grad) < 0:
        errors.append(f"method_kwargs.clip_grad={mk.clip_grad} must be >= 0 (0 disables clipping)")
    large = omegaconf_select(cfg, "data.num_large_crops", None)
    if large is not None and int(large) != 2:
        errors.append(
            f"{method} needs exactly 2 global (large) crops, the config yields {large}: the first "
            "augmentation pipeline's crop_size defines the large crops, give them num_crops "
            "summing to 2 and a different crop_size to the local crops"
        )
    return errors


def allow_local_crops(cfg: omegaconf.DictConfig, method: str) -> None:
    """A ViT with local crops (smaller than its img_size) needs timm's ``dynamic_img_size``."""
    name = str(omegaconf_select(cfg, "backbone.name", ""))
    small = omegaconf_select(cfg, "data.num_small_crops", 0) or 0
    if not name.startswith("vit") or small <= 0:
        return
    if omegaconf_select(cfg, "backbone.kwargs.dynamic_img_size", None) is None:
        cfg.backbone.kwargs.dynamic_img_size = True
    elif not cfg.backbone.kwargs.dynamic_img_size:
        raise ValueError(
            f"{method} with local crops and a ViT needs backbone.kwargs.dynamic_img_size=True "
            "(local crops are smaller than the ViT's img_size)"
        )


class MaskedMomentumMethod(BaseMomentumMethod):
    """solo-learn momentum method with a block-masked ViT student (see the module docstring).

    Subclasses set :attr:`patch_objective` and :attr:`fallback` (for the warning without a ViT),
    create ``self.head`` and ``self.momentum_head`` (the student's is clipped with the backbone), and call
    :meth:`masked_training_step` / :meth:`finish_step` in their ``training_step``.
    """

    patch_objective = "the patch objective"
    fallback = "the [CLS] objective"

    def __init__(self, cfg: omegaconf.DictConfig, use_patches: bool, mask_seed: int, name: str) -> None:
        super().__init__(cfg)
        mk = cfg.method_kwargs
        self.clip_grad = float(mk.clip_grad)
        self.nonfinite = NonFiniteGuard(str(mk.on_nonfinite), int(mk.max_consecutive_skips), "method_kwargs.", name)
        is_vit = isinstance(self.backbone, VisionTransformer)
        if use_patches and not is_vit:
            log.warning(
                "%s needs patch tokens from a ViT backbone; %s has none, so %s trains with %s only "
                "(method_kwargs.mim_weight=%s is ignored)",
                self.patch_objective,
                self.backbone_name,
                name,
                self.fallback,
                mk.get("mim_weight"),
            )
        self.use_mim = use_patches and is_vit
        if self.use_mim:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
            self.num_prefix_tokens = int(self.backbone.num_prefix_tokens)
        self.mask_seed = int(mask_seed)
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

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """solo-learn's groups plus the head and, with patch tokens, the mask token (no weight decay)."""
        extra = [{"name": "head", "params": self.head.parameters()}]
        if self.use_mim:
            extra.append({"name": "mask_token", "params": [self.mask_token], "weight_decay": 0.0})
        return super().learnable_params + extra

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        """(backbone, momentum_backbone) from solo-learn plus (head, momentum_head)."""
        return super().momentum_pairs + [(self.head, self.momentum_head)]

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
        step = int(self.trainer.global_step) if self._trainer is not None else 0
        gen = torch.Generator().manual_seed(mix_seed(self.mask_seed, step, batch_idx, rank_and_world()[0]))
        masks = []
        for x in views:
            grid = self.patch_grid(x)
            if grid not in self._mask_generators:
                self._mask_generators[grid] = BlockMaskGenerator(grid, **self._mask_settings)
            masks.append(self._mask_generators[grid](x.shape[0], gen).to(x.device))
        return masks

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
        """Teacher on an unmasked global crop: features, and patch tokens while training."""
        feats, patches = self.encode(X, teacher=True)
        return {"feats": feats, "patches": patches} if patches is not None and self.training else {"feats": feats}

    def masked_training_step(self, batch: Sequence[Any], batch_idx: int, buffers: nn.Module):
        """solo-learn's shared step (classifiers, kNN, teacher) with masked global crops.

        ``buffers``: the module whose buffers a skipped step restores (memories, centres).
        Returns solo-learn's outputs and the masks (empty without patch tokens).
        """
        X = batch[1] if not isinstance(batch[1], Tensor) else [batch[1]]
        masks = self._draw_masks(X[: self.num_large_crops], batch_idx) if self.use_mim else []
        self.nonfinite.snapshot(buffers)
        self._pending_masks = list(masks)
        try:
            out = BaseMomentumMethod.training_step(self, batch, batch_idx)
        finally:
            self._pending_masks = []
        return out, masks

    def finish_step(self, total: Tensor, explain: Any) -> bool:
        """False when the step's loss is non-finite and skipped; raises under ``on_nonfinite=stop``."""
        ok = self.nonfinite.check(total, int(self.trainer.global_step), explain, self._checkpoint_hint)
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
        """Optimisation steps in ``epochs`` epochs of this run."""
        return int(round(epochs * self.trainer.estimated_stepping_batches / max(1, self.max_epochs)))

    def on_train_start(self) -> None:
        """Puts the EMA coefficient where a resumed run left it.

        solo-learn keeps tau in a plain attribute that checkpoints do not carry, so a resumed
        run would make its first EMA update with the *initial* tau; recomputing it from the
        restored global step makes the resume exact.
        """
        super().on_train_start()
        if self.trainer.global_step > 0:
            self.momentum_updater.update_tau(
                cur_step=self.trainer.global_step, max_steps=self.trainer.estimated_stepping_batches
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step updates nothing: parameters without gradients are left alone."""
        self.nonfinite.drop_gradients(optimizer)

    def on_after_backward(self) -> None:
        """Clips each student parameter's gradient norm to ``clip_grad`` (when > 0)."""
        if self.clip_grad <= 0:
            return
        params = [*self.backbone.parameters(), *self.head.parameters(), *([self.mask_token] if self.use_mim else [])]
        for p in params:
            if p.grad is not None:
                p.grad.mul_((self.clip_grad / (p.grad.detach().norm(2) + 1e-6)).clamp(max=1.0))
