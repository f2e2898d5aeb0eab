"""The benchmark's one Lightning module: same ViT, crops, masks, optimiser and EMA for every objective."""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from sop_plugin.bench.objectives import build_objective
from sop_plugin.core import (
    BlockMaskGenerator,
    MaskedEncoder,
    build_vit,
    cosine_schedule,
    ema_update,
    warmup_cosine,
)
from sop_plugin.data.augment import EvalTransform, MultiCropAugment


class BenchModule(L.LightningModule):
    """Student/teacher ViT trained with the objective named ``method``.

    Batches are raw uint8 images [B, C, H, W] (+ labels, unused); multi-crop
    augmentation and masks are drawn here from generators seeded by
    (seed, step, rank), so runs are reproducible and resumable.

    Args:
        cfg: the resolved benchmark config (``model``, ``crops``, ``masks``, ``optim``,
            ``ema``, ``train`` and the per-method section).
        method: a name in :data:`sop_plugin.bench.objectives.OBJECTIVES`.
        in_chans, mean, std: image channels and normalisation of the dataset.
        total_steps: optimisation steps of the whole run (for schedules).
    """

    def __init__(self, cfg: dict[str, Any], method: str, in_chans: int, mean: tuple[float, ...],
                 std: tuple[float, ...], total_steps: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg
        self.method = method
        self.total_steps = max(1, total_steps)
        m, crops = cfg["model"], cfg["crops"]
        vit = build_vit(crops["global_size"], m["patch_size"], m["embed_dim"], m["depth"], m["num_heads"],
                        in_chans=in_chans, drop_path_rate=m.get("drop_path_rate", 0.0))
        self.student = MaskedEncoder(vit)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.objective = build_objective(method, self.student.embed_dim, cfg[method], self.total_steps)
        self.augment = MultiCropAugment(
            global_size=crops["global_size"], local_size=crops["local_size"], num_local=crops["num_local"],
            global_scale=tuple(crops["global_scale"]), local_scale=tuple(crops["local_scale"]), mean=mean, std=std,
            **crops.get("extra", {}),
        )
        self.eval_transform = EvalTransform(crops["global_size"], mean=mean, std=std)
        grid = crops["global_size"] // m["patch_size"]
        mk = cfg["masks"]
        self.mask_gen = BlockMaskGenerator((grid, grid), mask_prob=mk["prob"], ratio=tuple(mk["ratio"]),
                                           min_block=mk.get("min_block", 4))
        self.seed = int(cfg.get("seed", 0))

    # ------------------------------------------------------------------ randomness
    def _generator(self, step: int) -> torch.Generator:
        rank, world = self.global_rank, max(1, self.trainer.world_size if self._trainer else 1)
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * max(world, 1) + rank)

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
        gen = self._generator(step)
        views = self.augment(images, gen)
        views = [x.to(self.device) for x in views]
        g, b = 2, images.shape[0]
        masks = None
        if self.objective.uses_masks:
            masks = self.mask_gen(g * b, gen).view(g, b, -1).to(self.device)
        s_cls_g, s_patch = self._encode(self.student, views[:g], masks)
        s_cls = [s_cls_g]
        if len(views) > g:
            s_cls_l, _ = self._encode(self.student, views[g:], None)
            s_cls.append(s_cls_l)
        with torch.no_grad():
            t_cls, t_patch = self._encode(self.teacher, views[:g], None)
        if len(batch) > 2:
            self.objective.observe_batch(batch[2])
        loss, logs = self.objective(torch.cat(s_cls), s_patch if masks is not None else None, t_cls,
                                    t_patch if masks is not None else None, masks, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite {self.method} loss at step {step}: {logs}; lower optim.lr or check the data"
            )
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        for k, val in logs.items():
            self.log(f"train/{k}", float(val), on_step=False, on_epoch=True, batch_size=b)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        e = self.cfg["ema"]
        momentum = cosine_schedule(int(self.global_step), self.total_steps, e["start"], e["end"])
        ema_update(self.teacher, self.student, momentum)
        for s, t in self.objective.momentum_pairs():
            ema_update(t, s, momentum)

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(self, images_uint8: Tensor, batch_size: int = 1024) -> Tensor:
        """Teacher backbone [CLS] features (before the head) of uint8 images, float32 on CPU."""
        was_training = self.teacher.training
        self.teacher.eval()
        out = []
        for i in range(0, images_uint8.shape[0], batch_size):
            x = self.eval_transform(images_uint8[i : i + batch_size]).to(self.device)
            out.append(self.teacher(x)[0].float().cpu())
        self.teacher.train(was_training)
        return torch.cat(out)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        o = self.cfg["optim"]
        params = [p for p in list(self.student.parameters()) + list(self.objective.parameters()) if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=o["lr"], betas=(0.9, 0.999))
        warmup = int(math.ceil(o["warmup_fraction"] * self.total_steps))
        final = o["min_lr"] / o["lr"]

        def factor(step: int) -> float:
            return warmup_cosine(step, self.total_steps, warmup, 1.0, final)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
