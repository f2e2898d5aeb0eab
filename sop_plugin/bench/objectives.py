"""Pluggable training objectives for the benchmark: ``sop`` (ours), ``dino`` and ``ibot`` (lightly).

Each objective owns its student head, its EMA teacher head and its loss; the
benchmark module owns everything else (backbone, crops, masks, optimiser, EMA
schedule), so the objective is the only thing that differs between runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
from lightly.models.modules import DINOProjectionHead
from torch import Tensor, nn

from sop_plugin.core import (
    SOPConfig,
    SOPHead,
    SOPObjective,
    build_sops,
    gather_across_ranks,
    linear_warmup,
    rank_and_world,
)


class BenchObjective(nn.Module):
    """Interface: heads + loss on the backbone's [CLS]/patch tokens.

    ``forward`` takes student tokens ``s_cls`` [V, B, D] (globals first),
    ``s_patch`` [G, B, N, D] of the masked global views (None when
    ``uses_masks`` is False), teacher tokens ``t_cls`` [G, B, D] and ``t_patch``
    [G, B, N, D], the masks [G, B, N] and the global step, and returns the loss
    and scalars to log.
    """

    uses_masks: bool = False
    student_head: nn.Module
    teacher_head: nn.Module

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) modules updated by EMA."""
        return [(self.student_head, self.teacher_head)]

    def observe_batch(self, image_ids: Tensor) -> None:
        """Called with the dataset indices of the batch before ``forward`` (default: ignored)."""

    def forward(
        self,
        s_cls: Tensor,
        s_patch: Tensor | None,
        t_cls: Tensor,
        t_patch: Tensor | None,
        masks: Tensor | None,
        step: int,
    ) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


def _teacher_of(student: nn.Module, factory: Callable[[], nn.Module]) -> nn.Module:
    """A fresh module from ``factory`` holding the student's weights, without gradients.

    (``deepcopy`` fails on lightly's weight-normalised DINO head.)
    """
    teacher = factory()
    teacher.load_state_dict(student.state_dict())
    return teacher.requires_grad_(False)


def _head_rows(head: nn.Module, cls: Tensor, *rows: Tensor) -> tuple[Tensor, ...]:
    """``head`` on [CLS] tokens [V, B, D] and extra token rows [n_i, D] in one call (fewer, larger GEMMs)."""
    flat = cls.reshape(-1, cls.shape[-1])
    parts = head(torch.cat([flat, *rows])).split([flat.shape[0], *(r.shape[0] for r in rows)])
    return (parts[0].reshape(*cls.shape[:-1], -1), *parts[1:])


class SOPBench(BenchObjective):
    """SOP: shared [CLS]/patch head, :class:`SOPObjective` with its memories."""

    uses_masks = True

    def __init__(self, embed_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        sop_cfg = SOPConfig.from_mapping(cfg)

        def make() -> nn.Module:
            return SOPHead(embed_dim, sop_cfg.head_hidden_dim, sop_cfg.dim, sop_cfg.head_num_layers)

        self.student_head = make()
        self.teacher_head = _teacher_of(self.student_head, make)
        self.objective = SOPObjective(sop_cfg, koleo=KoLeoLoss())
        if sop_cfg.mim_weight == 0:
            self.uses_masks = False
        # dataset index of the image behind each class-memory row (-1: initial random row),
        # kept in step with the memory so SOPs can be shown as images
        self.register_buffer("class_ids", torch.full((sop_cfg.class_memory_size,), -1, dtype=torch.long))

    @torch.no_grad()
    def observe_batch(self, image_ids: Tensor) -> None:  # noqa: D102
        ids = gather_across_ranks(image_ids.to(self.class_ids.device))
        mem = self.objective.class_memory
        pos = (torch.arange(ids.numel(), device=ids.device) + int(mem.ptr)) % mem.size
        self.class_ids[pos] = ids

    @torch.no_grad()
    def sop_examples(self, num_sops: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """One SOP set drawn from filled class-memory rows, as dataset indices.

        Returns anchor ids [P], SE ids [P, k] and SE similarities [P, k].
        """
        filled = torch.nonzero(self.class_ids >= 0).flatten()
        if filled.numel() < 2:
            raise ValueError("the class memory holds no real embeddings yet: train for a few steps first")
        gen = torch.Generator().manual_seed(seed)
        p = min(num_sops, filled.numel() // (self.objective.cfg.class_num_supports + 1))
        anchors = filled[torch.randperm(filled.numel(), generator=gen)[:p]]
        bank = self.objective.class_memory.bank
        # restrict the pool to real rows so every SE has an image
        pool_ids = filled
        local = torch.searchsorted(pool_ids, anchors)
        sops = build_sops(
            bank[pool_ids],
            local,
            self.objective.cfg.class_num_supports,
            self.objective.cfg.smoothing,
            self.objective.retrieval,
        )
        k = sops.num_supports
        rows = pool_ids[sops.memory_index].view(p, k + 1)
        ids = self.class_ids[rows]
        return ids[:, 0], ids[:, 1:], sops.weights.view(p, k + 1)[:, 1:]

    def forward(self, s_cls, s_patch, t_cls, t_patch, masks, step):  # noqa: D102
        s_pz = t_pz = mem_pz = None
        if s_patch is not None and t_patch is not None and masks is not None:
            # the head sees only the masked patches and the patch-memory rows, as iBOT's does,
            # in one call per network with the [CLS] tokens (the head is row-wise)
            masked, memory = self.objective.select_patches(masks, step)
            dim = s_patch.shape[-1]
            s_z, s_pz = _head_rows(self.student_head, s_cls, s_patch.reshape(-1, dim)[masked])
            t_z, t_pz, mem_pz = _head_rows(
                self.teacher_head, t_cls, t_patch.reshape(-1, dim)[masked], t_patch[0].reshape(-1, dim)[memory]
            )
        else:
            s_z, t_z = self.student_head(s_cls), self.teacher_head(t_cls)
        out = self.objective(s_z, t_z, s_pz, t_pz, masks, step=step, memory_patches=mem_pz)
        logs = {
            "loss_cls": float(out.cls_loss.detach()),
            "loss_mim": float(out.mim_loss.detach()),
            "teacher_temp": out.teacher_temp,
            **out.stats,
        }
        return out.loss, logs


class _PrototypeBench(BenchObjective):
    """Shared pieces of DINO and iBOT: lightly's DINO head and loss, temperature warm-up."""

    def __init__(self, embed_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        head = cfg["head"]
        self.temps = cfg["temps"]

        def make() -> nn.Module:
            return DINOProjectionHead(
                embed_dim,
                head["hidden_dim"],
                head["bottleneck_dim"],
                head["out_dim"],
                freeze_last_layer=head.get("freeze_last_layer", -1),
            )

        self.student_head = make()
        self.teacher_head = _teacher_of(self.student_head, make)
        self.cls_loss = DINOLoss(
            output_dim=head["out_dim"],
            student_temp=self.temps["student"],
            center_momentum=cfg.get("center_momentum", 0.9),
        )

    def teacher_temp(self, step: int) -> float:
        t = self.temps
        return linear_warmup(step, t["warmup_steps"], t["warmup_teacher"], t["teacher"])

    def _cls_loss(self, s_cls: Tensor, t_cls: Tensor, step: int) -> Tensor:
        s_out = self.student_head(s_cls)
        t_out = self.teacher_head(t_cls)
        return self.cls_loss(list(t_out), list(s_out), teacher_temp=self.teacher_temp(step))


class DINOBench(_PrototypeBench):
    """DINO: [CLS] only, learnable prototypes, centering (lightly ``DINOLoss``)."""

    def forward(self, s_cls, s_patch, t_cls, t_patch, masks, step):  # noqa: D102
        loss = self._cls_loss(s_cls, t_cls, step)
        return loss, {"loss_cls": float(loss.detach()), "teacher_temp": self.teacher_temp(step)}


class IBOTBench(_PrototypeBench):
    """iBOT: DINO loss on [CLS] plus lightly's ``IBOTPatchLoss`` on masked patches (shared head)."""

    uses_masks = True

    def __init__(self, embed_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(embed_dim, cfg)
        self.patch_loss = IBOTPatchLoss(
            output_dim=cfg["head"]["out_dim"],
            student_temp=self.temps["student"],
            center_momentum=cfg.get("center_momentum", 0.9),
        )
        self.mim_weight = float(cfg.get("mim_weight", 1.0))

    def forward(self, s_cls, s_patch, t_cls, t_patch, masks, step):  # noqa: D102
        cls_loss = self._cls_loss(s_cls, t_cls, step)
        assert s_patch is not None and t_patch is not None and masks is not None
        g, b, n, d = s_patch.shape
        m = masks.reshape(g * b, n)
        s_out = self.student_head(s_patch.reshape(g * b, n, d)[m])
        t_out = self.teacher_head(t_patch.reshape(g * b, n, d)[m])
        side = int(round(n**0.5))
        grid_mask = m.view(g * b, side, n // side)
        # under DDP every rank must join the patch centre's all-reduce, masked patches or not
        if m.any() or rank_and_world()[1] > 1:
            patch_loss = self.patch_loss(t_out, s_out, grid_mask, teacher_temp=self.teacher_temp(step))
        else:
            patch_loss = s_out.sum() * 0.0
        loss = cls_loss + self.mim_weight * patch_loss
        return loss, {
            "loss_cls": float(cls_loss.detach()),
            "loss_mim": float(patch_loss.detach()),
            "teacher_temp": self.teacher_temp(step),
        }


#: name -> factory(embed_dim, method_cfg)
OBJECTIVES: dict[str, Callable[[int, dict[str, Any]], BenchObjective]] = {
    "sop": SOPBench,
    "dino": DINOBench,
    "ibot": IBOTBench,
}


def build_objective(name: str, embed_dim: int, cfg: dict[str, Any]) -> BenchObjective:
    """Instantiate the objective ``name`` from :data:`OBJECTIVES`."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r} in `methods`; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](embed_dim, cfg)
