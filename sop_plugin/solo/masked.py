"""The solo-learn host of :mod:`sop_plugin.methods`: a block-masked ViT student feeding one method.

:class:`MaskedMomentumMethod` sits between solo-learn's ``BaseMomentumMethod`` and a method of
:mod:`sop_plugin.methods` (SOP, iBOT): the same heads, loss, schedules and masking policy the
benchmark trains. With a ViT backbone the student's global crops are masked block-wise
(:mod:`sop_plugin.solo.student_masks`) and the method receives the [CLS] and patch tokens of
student and teacher. Without patch tokens (ResNet, ...) the patch objective is off with a warning.
``method_kwargs`` holds the method's own fields (the one vocabulary of both hosts) plus
:data:`~sop_plugin.solo.settings.SHARED_KEYS`, parsed once (:class:`~sop_plugin.solo.settings.SoloSettings`);
epoch counts become steps when training starts, when the steps per epoch are known.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import omegaconf
import torch
import torch.nn.functional as F
from solo.methods.base import BaseMomentumMethod
from solo.utils.metrics import accuracy_at_k
from solo.utils.misc import omegaconf_select
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from sop_plugin.methods import Method, Tokens, build_method, method_class
from sop_plugin.runtime import NonFiniteGuard, clip_per_parameter
from sop_plugin.solo.settings import SHARED_KEYS, SoloSettings, fill_defaults, parse_settings
from sop_plugin.solo.student_masks import StudentMasks

log = logging.getLogger(__name__)

#: what a backbone gives the method: features [B, D] and patch tokens [B, N, D] (None without masking)
Encoded = tuple[Tensor, Tensor | None]


class MaskedMomentumMethod(BaseMomentumMethod):
    """solo-learn momentum method running :attr:`method_name` of :mod:`sop_plugin.methods`.

    Subclasses set :attr:`method_name`, :attr:`display_name`, :attr:`METHOD_KWARGS_DEFAULTS` and
    the texts of the warning without a ViT; the heads are the method's (``head`` and
    ``momentum_head`` name them for solo-learn), the loss is the method's.
    """

    method_name: ClassVar[str]
    display_name: ClassVar[str]
    METHOD_KWARGS_DEFAULTS: ClassVar[dict[str, Any]]
    patch_objective = "the patch objective"
    fallback = "the [CLS] objective"
    #: the settings :meth:`add_and_assert_specific_cfg` parsed last, with their cfg: solo-learn's
    #: ``__init__`` runs that check on the cfg before ours sees it, and it has no instance to keep them on
    _last_parsed: ClassVar[tuple[omegaconf.DictConfig, SoloSettings] | None] = None

    def __init__(self, cfg: omegaconf.DictConfig) -> None:
        super().__init__(cfg)  # calls add_and_assert_specific_cfg: defaults filled, every value parsed
        #: ``method_kwargs``, parsed and checked once
        self.settings = self._take_parsed(self.cfg)
        masks = self.settings.masks
        if masks is not None and not isinstance(self.backbone, VisionTransformer):
            log.warning(
                "%s needs patch tokens from a ViT backbone; %s has none, so %s trains with %s only "
                "(method_kwargs.mim_weight=%s is ignored)",
                self.patch_objective,
                self.backbone_name,
                self.display_name,
                self.fallback,
                getattr(self.settings.config, "mim_weight", None),
            )
            masks = None
        #: the method's heads, loss and schedules: the same code the benchmark trains
        self.method: Method = build_method(self.method_name, self.features_dim, self.settings.config, masks)
        self.clip_grad = self.settings.clip_grad
        skips = self.settings.max_consecutive_skips
        policy = self.settings.on_nonfinite
        self.nonfinite = NonFiniteGuard(policy, skips, "method_kwargs.", name=self.display_name)
        self.use_mim = self.method.uses_masks
        self._masks: StudentMasks | None = None
        if self.use_mim:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
            self._masks = StudentMasks(self.method.masks, int(omegaconf_select(cfg, "seed", 0) or 0))
        self._pending_masks: list[Tensor] = []

    # ------------------------------------------------------------------ config
    @classmethod
    def host_keys(cls) -> list[str]:
        """``method_kwargs`` keys that are the host's, not the method config's."""
        fields = set(cls.METHOD_KWARGS_DEFAULTS) - set(SHARED_KEYS)
        own = {f.name for f in dataclasses.fields(method_class(cls.method_name).config_class)}
        return sorted(set(SHARED_KEYS) | (fields - own))

    @classmethod
    def parse(cls, cfg: omegaconf.DictConfig) -> SoloSettings:
        """The settings of a filled ``cfg.method_kwargs``; ``ValueError`` listing every bad value."""
        return parse_settings(cfg, cls.method_name, cls.display_name, cls.host_keys())

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:  # type: ignore[override]
        """Fill the missing ``method_kwargs`` from this method's defaults and parse them (``ValueError``
        listing every bad value); solo-learn calls it on the class and again from ``__init__``."""
        cfg = BaseMomentumMethod.add_and_assert_specific_cfg(cfg)
        fill_defaults(cfg, cls.METHOD_KWARGS_DEFAULTS, cls.display_name)
        settings = cls.parse(cfg)
        cls.warn_unusual(settings, cfg)
        MaskedMomentumMethod._last_parsed = (cfg, settings)
        return cfg

    @classmethod
    def warn_unusual(cls, settings: SoloSettings, cfg: omegaconf.DictConfig) -> None:
        """Log settings that work but may not do what was meant (default: none)."""

    @classmethod
    def _take_parsed(cls, cfg: omegaconf.DictConfig) -> SoloSettings:
        """The settings :meth:`add_and_assert_specific_cfg` parsed from ``cfg`` (the very object) while
        solo-learn built this method."""
        parsed, MaskedMomentumMethod._last_parsed = MaskedMomentumMethod._last_parsed, None
        if parsed is None or parsed[0] is not cfg:
            raise RuntimeError(
                f"{cls.__name__}.add_and_assert_specific_cfg must be MaskedMomentumMethod's "
                "(solo-learn calls it on the cfg of every new method)"
            )
        return parsed[1]

    # ------------------------------------------------------------------ modules
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
        """solo-learn's groups plus the method's parameters and, with patch tokens, the mask token
        (no weight decay)."""
        params = [p for p in self.method.parameters() if p.requires_grad]
        extra: list[dict[str, Any]] = [{"name": "head", "params": params}]
        if self.use_mim:
            extra.append({"name": "mask_token", "params": [self.mask_token], "weight_decay": 0.0})
        return super().learnable_params + extra

    @property
    def momentum_pairs(self) -> list[tuple[Any, Any]]:
        """(backbone, momentum_backbone) from solo-learn plus the method's (student, teacher) pairs."""
        return super().momentum_pairs + self.method.momentum_pairs()

    def forward(self, X: Tensor) -> dict[str, Any]:
        """Unmasked student on images [B, C, H, W] (validation, feature extraction): ``feats`` [B, D],
        ``logits`` and ``z`` (the head's output)."""
        out = super().forward(X)
        out["z"] = self.head(out["feats"])
        return out

    # ------------------------------------------------------------------ masking
    def patch_grid(self, X: Tensor) -> tuple[int, int]:
        """The ViT's patch grid (H, W) for images like ``X`` [B, C, H, W]."""
        ph, pw = self.backbone.patch_embed.patch_size
        return X.shape[-2] // ph, X.shape[-1] // pw

    def _draw_masks(self, views: Sequence[Tensor], batch_idx: int) -> list[Tensor]:
        """One bool mask [B, N] per global view [B, C, H, W]; the same masks for the same (seed, step,
        batch, rank)."""
        assert self._masks is not None
        grids = [self.patch_grid(x) for x in views]
        return self._masks.draw(views, grids, self.current_step(), batch_idx)

    def current_step(self) -> int:
        """The optimisation step (0 outside a fit)."""
        return int(self.trainer.global_step) if self._trainer is not None else 0

    def encode(self, X: Tensor, mask: Tensor | None = None, teacher: bool = False) -> Encoded:
        """Features [B, D] and patch tokens [B, N, D] (None without masking) of the (momentum)
        backbone on images ``X`` [B, C, H, W]; ``mask`` bool [B, N] hides the patches it marks."""
        if not self.no_channel_last:
            X = X.to(memory_format=torch.channels_last)
        vit = self.momentum_backbone if teacher else self.backbone
        if self._masks is None:
            return vit(X), None
        return self._masks.encode(vit, X, mask, teacher, self.mask_token)

    # ------------------------------------------------------------------ solo-learn hooks
    def base_training_step(self, X: Tensor, targets: Tensor) -> dict[str, Any]:
        """Masked student on one global crop [B, C, H, W] plus solo-learn's online-classifier loss."""
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
        """Teacher on an unmasked global crop [B, C, H, W]: ``feats`` [B, D], ``z`` (the teacher head's
        output) and, while training, ``patches`` [B, N, D]."""
        feats, patches = self.encode(X, teacher=True)
        out = {"feats": feats, "z": self.momentum_head(feats)}
        if patches is not None and self.training:
            out["patches"] = patches
        return out

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """solo-learn's shared step (classifiers, kNN, teacher) on masked global crops, then the method's
        loss; ``batch`` is (image ids [B], crops, labels [B])."""
        X = batch[1] if not isinstance(batch[1], Tensor) else [batch[1]]
        masks = self._draw_masks(X[: self.num_large_crops], batch_idx) if self.use_mim else []
        self.nonfinite.snapshot(self.method)
        self.method.observe_batch(batch[0])
        self._pending_masks = list(masks)
        try:
            out = BaseMomentumMethod.training_step(self, batch, batch_idx)
        finally:
            self._pending_masks = []
        tokens = Tokens(torch.stack(out["feats"]), torch.stack(out["momentum_feats"]))
        if self.use_mim:
            tokens.student_patches = torch.stack(out["patches"])
            tokens.teacher_patches = torch.stack(out["momentum_patches"])
            tokens.masks = torch.stack(masks)
        result = self.method(tokens, self.current_step())
        total = result.loss + out["loss"]
        if not self.finish_step(total, lambda: self._explain_nonfinite(result, out["loss"])):
            return total  # its gradients are dropped in on_before_optimizer_step
        self._log_method(result)
        return total

    def _log_method(self, result: Any) -> None:
        """The method's losses (epoch means) and its other logs (per step), under the method's name."""
        name = self.method_name
        logs = result.logs
        metrics = {f"train_{name}_loss": result.loss}
        metrics.update({f"train_{name}_{k[5:]}_loss": v for k, v in logs.items() if k.startswith("loss_")})
        self.log_dict(metrics, on_epoch=True, sync_dist=True)
        extras = {k: v for k, v in logs.items() if not k.startswith("loss_")}
        named = {k if k.startswith(f"{name}_") else f"{name}_{k}": v for k, v in extras.items()}
        self.log_dict(named, on_epoch=False, on_step=True)

    def _explain_nonfinite(self, result: Any, solo_loss: Tensor) -> str:
        """The method's explanation, and solo-learn's online classifier loss when it is the culprit."""
        own = self.method.explain_nonfinite(result)
        if bool(torch.isfinite(solo_loss.detach()).all()):
            return own
        return f"solo-learn's online classifier loss is {float(solo_loss):.4g}; {self.display_name}: {own}"

    def finish_step(self, total: Tensor, explain: Callable[[], str]) -> bool:
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
                resume = f"++resume_from_checkpoint='{path}'"
                return f"last good checkpoint: {path} (resume with {resume} after the fix)"
        return "no checkpoint written yet in this run"

    def steps_per_epoch(self) -> float:
        """Optimisation steps per epoch of this fit (a loader without a length: the run's over max_epochs)."""
        batches = self.trainer.num_training_batches
        if math.isinf(batches):
            return self.trainer.estimated_stepping_batches / max(1, self.max_epochs)
        return batches // max(1, self.trainer.accumulate_grad_batches)

    def on_train_start(self) -> None:
        """Gives the method its schedules in steps, and puts the EMA coefficient where a resumed run left it.

        solo-learn keeps tau in a plain attribute that checkpoints do not carry, so a resumed
        run would make its first EMA update with the *initial* tau; recomputing it from the
        restored global step makes the resume exact.
        """
        super().on_train_start()
        self.method.set_step_schedule(*self.settings.step_schedule(self.steps_per_epoch()))
        if self.trainer.global_step > 0:
            self.momentum_updater.update_tau(
                cur_step=self.trainer.global_step, max_steps=self.trainer.estimated_stepping_batches
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step updates nothing: parameters without gradients are left alone."""
        self.nonfinite.drop_gradients(optimizer)

    def on_after_backward(self) -> None:
        """The method's own hook (last-layer freeze), then each student parameter's gradient norm
        clipped to ``clip_grad``."""
        self.method.after_backward(self.current_step())
        mask_token = [self.mask_token] if self.use_mim else []
        student = [*self.backbone.parameters(), *self.method.parameters(), *mask_token]
        clip_per_parameter(student, self.clip_grad)
