"""The benchmark's one Lightning module: same ViT, crops, masks, optimiser and EMA for every objective."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from sop_plugin.bench.settings import ModuleSettings
from sop_plugin.bench.train.ema import ema_update
from sop_plugin.bench.train.encoder import MaskedEncoder, build_vit
from sop_plugin.bench.train.nonfinite import checkpoint_hint
from sop_plugin.core import NULL_TIMER, PhaseTimer, cosine_schedule, mix_seed, rank_and_world, warmup_cosine
from sop_plugin.data.augment import EvalTransform
from sop_plugin.methods import MethodOutput, Tokens, build_method
from sop_plugin.runtime import NonFiniteGuard, clip_per_parameter
from sop_plugin.runtime.masking import BlockMaskGenerator


class BenchModule(L.LightningModule):
    """Student/teacher ViT trained with the objective named ``method``.

    Batches are raw uint8 images [B, C, H, W] (+ labels, unused); multi-crop
    augmentation and masks are drawn here from generators seeded by
    (seed, step, chunk), where chunk numbers blocks of ``train.rng_chunk`` images of
    the *global* batch: runs are reproducible and resumable, and a DDP run sees the
    same views and masks as one process with the same global batch and chunk size.
    Torch's global RNG (drop-path) is reseeded from (seed, step, rank) every step.

    Args:
        settings: the validated settings of this method's module
            (:meth:`~sop_plugin.bench.settings.BenchSettings.module`).
        in_chans, mean, std: image channels and normalisation of the dataset.
    """

    def __init__(
        self, settings: ModuleSettings, in_chans: int, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        super().__init__()
        # plain values only, so that the safe checkpoint loader reads them back (``sop-bench-eval``)
        self.save_hyperparameters(
            {
                "cfg": dict(settings.source),
                "method": settings.method.name,
                "in_chans": in_chans,
                "mean": tuple(mean),
                "std": tuple(std),
                "total_steps": settings.total_steps,
            }
        )
        self.settings = settings
        self.method = settings.method.name
        self.total_steps = settings.total_steps
        m, crops = settings.model, settings.crops

        def vit(drop_path_rate: float) -> MaskedEncoder:
            shape = (crops.global_size, m.patch_size, m.embed_dim, m.depth, m.num_heads)
            return MaskedEncoder(build_vit(*shape, in_chans=in_chans, drop_path_rate=drop_path_rate))

        # drop path on the student only; the teacher is deterministic (no drop path, always in eval mode)
        self.student = vit(m.drop_path_rate)
        self.teacher = vit(0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False).eval()
        own = settings.method
        #: the method's heads, loss and schedules (:mod:`sop_plugin.methods`, the same code solo-learn runs)
        self.objective = build_method(
            own.name, self.student.embed_dim, own.config_for(self.total_steps), own.masks
        )
        self.augment = crops.augment(mean, std)
        self.eval_transform = EvalTransform(crops.global_size, mean=mean, std=std)
        grid = crops.global_size // m.patch_size
        masks = self.objective.masks
        self.mask_gen = None
        if masks is not None:
            self.mask_gen = BlockMaskGenerator((grid, grid), masks.prob, masks.ratio, masks.min_block)
        #: the optimiser settings: shared ``optim`` with this method's ``<method>.optim``
        #: (tuned values) on top
        self.optim = own.optim
        self.seed = settings.seed
        t = settings.train
        self.rng_chunk: int | None = t.rng_chunk
        self.nonfinite = NonFiniteGuard(
            t.on_nonfinite, t.max_consecutive_skips, settings="train.", name=own.name
        )
        if not self.objective.uses_masks:  # unused without masks: DDP needs every trainable parameter used
            self.student.masked_vit.mask_token.requires_grad_(False)
        self._epoch_batches = (0, 0)  # (epoch, batches of it trained): resumes the sampler mid-epoch
        self._last_ckpt_step: int | None = None
        #: times "augment_masks" (``sop-perf``); the SOP objective has its own ``timer``
        self.timer: PhaseTimer = NULL_TIMER

    # ------------------------------------------------------------------ randomness
    def _chunk_generators(self, step: int, batch_size: int) -> list[tuple[slice, torch.Generator]]:
        """One generator per ``rng_chunk`` images, seeded by (seed, step, global chunk index)."""
        rank, _ = rank_and_world()
        chunk = self.rng_chunk or batch_size
        if batch_size % chunk:
            raise ValueError(f"train.rng_chunk={chunk} must divide the per-process batch size {batch_size}")
        per_rank = batch_size // chunk
        seeds = [mix_seed(self.seed, step, rank * per_rank + j) for j in range(per_rank)]
        return [
            (slice(j * chunk, (j + 1) * chunk), torch.Generator().manual_seed(seed))
            for j, seed in enumerate(seeds)
        ]

    def _views_and_masks(self, images: Tensor, step: int) -> tuple[list[Tensor], Tensor | None]:
        """Multi-crop views [V x [B, C, h, w]] and student masks [2, B, N] (None without masks)."""
        views_parts, mask_parts = [], []
        for part, gen in self._chunk_generators(step, images.shape[0]):
            chunk = images[part]
            views_parts.append(self.augment(chunk, gen))
            if self.mask_gen is not None:
                mask_parts.append(self.mask_gen(2 * chunk.shape[0], gen).view(2, chunk.shape[0], -1))
        views = views_parts[0] if len(views_parts) == 1 else [torch.cat(v) for v in zip(*views_parts)]
        masks = (
            None
            if not mask_parts
            else mask_parts[0]
            if len(mask_parts) == 1
            else torch.cat(mask_parts, dim=1)
        )
        return views, masks

    def _seed_global_rng(self, step: int) -> None:
        """Drop-path and any other draw from torch's global RNG: a function of (seed, step, rank)."""
        torch.manual_seed(mix_seed(self.seed, step, rank_and_world()[0], 7))

    def batches_done(self, epoch: int) -> int:
        """Batches of ``epoch`` already trained (what the sampler skips after a resume)."""
        return self._epoch_batches[1] if self._epoch_batches[0] == epoch else 0

    def data_position(self) -> tuple[int, int]:
        """(epoch being trained, batches of it already trained), for :class:`GlobalBatchSampler`."""
        epoch = int(self.current_epoch)
        return epoch, self.batches_done(epoch)

    def train(self, mode: bool = True) -> BenchModule:
        """Lightning's train mode for the student side; the teacher backbone stays in eval mode.

        The method keeps its own teacher heads in eval mode (:meth:`sop_plugin.methods.Method.train`).
        """
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ forward passes
    def _encode(self, enc: MaskedEncoder, views: list[Tensor], masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """Encode same-size views in one batch: ([V, B, D], [V, B, N, D])."""
        v, b = len(views), views[0].shape[0]
        flat_mask = masks.reshape(v * b, -1) if masks is not None else None
        cls, patches = enc(torch.cat(views), flat_mask)
        return cls.view(v, b, -1), patches.view(v, b, patches.shape[1], -1)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """``batch``: (uint8 images, labels[, dataset indices])."""
        images = batch[0]
        step = int(self.global_step)
        epoch = int(self.current_epoch)
        done = self.batches_done(epoch)
        self._epoch_batches = (epoch, done + 1)
        self._seed_global_rng(step)
        self.nonfinite.snapshot(self.objective)
        with self.timer.phase("augment_masks"):
            views, masks = self._views_and_masks(images, step)
        image_ids = batch[2] if len(batch) > 2 else None
        out = self.method_step(views, masks, step, image_ids)
        b = images.shape[0]
        loss, logs = out.loss, out.logs
        if not self.nonfinite.check(
            loss, step, lambda: self.objective.explain_nonfinite(out), self._checkpoint_hint
        ):
            self.log(
                "train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=1
            )
            return loss  # its gradients are dropped in on_before_optimizer_step
        sync = rank_and_world()[1] > 1
        self.log(
            "train/loss",
            loss.detach(),
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=b,
            sync_dist=sync,
        )
        for k, val in logs.items():
            self.log(f"train/{k}", float(val), on_step=False, on_epoch=True, batch_size=b, sync_dist=sync)
        return loss

    def method_step(
        self, views: list[Tensor], masks: Tensor | None, step: int, image_ids: Tensor | None = None
    ) -> MethodOutput:
        """The method's loss on multi-crop ``views`` (2 global first) with student ``masks`` [2, B, N].

        ``image_ids`` [B]: dataset indices of the images (SOP keeps them beside its class memory).
        """
        views = [x.to(self.device) for x in views]
        g = 2
        if masks is not None:
            masks = masks.to(self.device)
        s_cls_g, s_patch = self._encode(self.student, views[:g], masks)
        s_cls = [s_cls_g]
        if len(views) > g:
            s_cls_l, _ = self._encode(self.student, views[g:], None)
            s_cls.append(s_cls_l)
        with torch.no_grad():
            t_cls, t_patch = self._encode(self.teacher, views[:g], None)
        if image_ids is not None:
            self.objective.observe_batch(image_ids)
        return self.objective(Tokens(torch.cat(s_cls), t_cls, s_patch, t_patch, masks), step)

    # ------------------------------------------------------------------ non-finite losses
    @property
    def skipped_steps(self) -> int:
        """Steps dropped at a non-finite loss (``train.on_nonfinite=skip``)."""
        return self.nonfinite.skipped_steps

    def _checkpoint_hint(self) -> str:
        ckpt = getattr(self._trainer.checkpoint_callback, "last_model_path", None) if self._trainer else None
        return checkpoint_hint(ckpt, self._last_ckpt_step)

    def on_after_backward(self) -> None:
        self.objective.after_backward(int(self.global_step))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of a skipped step, clip each parameter's gradient norm.

        Then set this step's weight decay.
        """
        self.nonfinite.drop_gradients(optimizer)
        clip_per_parameter(
            [p for group in optimizer.param_groups for p in group["params"]], self.optim.clip_grad
        )
        for group in optimizer.param_groups:
            if group.get("decay_schedule"):
                group["weight_decay"] = self.weight_decay(int(self.global_step))

    def weight_decay(self, step: int) -> float:
        """Weight decay of the matrices at ``step``.

        Cosine from ``optim.weight_decay`` to ``optim.weight_decay_end``.
        """
        o = self.optim
        return cosine_schedule(step, self.total_steps, o.weight_decay, o.weight_decay_end)

    def learning_rate(self) -> float:
        """Peak learning rate: ``optim.base_lr`` x global batch / 256.

        The linear scaling rule of all three authors.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.optim.peak_lr(self.settings.train.batch_size * world)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA of the teacher (inside the step, so checkpoints include it)."""
        super().optimizer_step(*args, **kwargs)
        if not self.nonfinite.skip:
            self._ema_update(int(self.global_step))

    def _ema_update(self, step: int) -> None:
        s = self.settings
        momentum = cosine_schedule(step, self.total_steps, s.ema_start, s.ema_end)
        ema_update(self.teacher, self.student, momentum)
        for s, t in self.objective.momentum_pairs():
            ema_update(t, s, momentum)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._last_ckpt_step = int(self.global_step)
        checkpoint["sop_bench"] = {"epoch_batches": list(self._epoch_batches), **self.nonfinite.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("sop_bench", {})
        epoch, done = state.get("epoch_batches", (checkpoint.get("epoch", 0), 0))
        self._epoch_batches = (int(epoch), int(done))
        self.nonfinite.load_state_dict(state)
        self._last_ckpt_step = int(checkpoint.get("global_step", 0))

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(self, images_uint8: Tensor, batch_size: int = 1024) -> Tensor:
        """Teacher backbone [CLS] features (before the head) of uint8 images, float32 on CPU."""
        out = []
        for i in range(0, images_uint8.shape[0], batch_size):
            x = self.eval_transform(images_uint8[i : i + batch_size]).to(self.device)
            out.append(self.teacher(x)[0].float().cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        o = self.optim
        params = [
            p for p in list(self.student.parameters()) + list(self.objective.parameters()) if p.requires_grad
        ]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        lr = self.learning_rate()
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay(0), "decay_schedule": True},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
            betas=(0.9, 0.999),
            eps=o.eps,
        )
        warmup = int(math.ceil(o.warmup_fraction * self.total_steps))
        final = o.min_lr / lr

        def factor(step: int) -> float:
            return warmup_cosine(step, self.total_steps, warmup, 1.0, final)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
