"""Pluggable training objectives for the benchmark: ``sop`` (ours), ``dino`` and ``ibot`` (lightly).

Each objective owns its student head, its EMA teacher head and its loss; the
benchmark module owns everything else (backbone, crops, masks, optimiser, EMA
schedule), so the objective is the only thing that differs between runs.
"""

from __future__ import annotations

import math
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
    assign,
    build_sops,
    gather_across_ranks,
    get_retrieval,
    linear_warmup,
    rank_and_world,
    sample_anchors,
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

    def after_backward(self, step: int) -> None:
        """Called after every backward pass, before clipping and the optimiser step (default: nothing)."""

    def teacher_embedding(self, cls: Tensor) -> Tensor:
        """The teacher head's L2-normalised embedding of backbone [CLS] tokens [B, D] -> [B, d] (diagnostics)."""
        raise NotImplementedError

    def teacher_distribution(self, cls: Tensor, step: int) -> Tensor:
        """The teacher's probabilities [B, K] for [CLS] tokens [B, D], as its loss sees them at ``step``."""
        raise NotImplementedError

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


#: keys of a method's section that belong to the benchmark, not to the objective (its masks, optimiser overrides)
HOST_KEYS = ("masks", "optim")


def _bottleneck(head: nn.Module, x: Tensor) -> Tensor:
    """The L2-normalised bottleneck of lightly's ``DINOProjectionHead`` (what its prototype layer sees)."""
    return nn.functional.normalize(head.layers(x), dim=-1)


def _head_rows(head: nn.Module, cls: Tensor, *rows: Tensor) -> tuple[Tensor, ...]:
    """``head`` on [CLS] tokens [V, B, D] and extra token rows [n_i, D] in one call (fewer, larger GEMMs)."""
    flat = cls.reshape(-1, cls.shape[-1])
    parts = head(torch.cat([flat, *rows])).split([flat.shape[0], *(r.shape[0] for r in rows)])
    return (parts[0].reshape(*cls.shape[:-1], -1), *parts[1:])


class SOPBench(BenchObjective):
    """SOP: shared [CLS]/patch head, :class:`SOPObjective` with its memories."""

    uses_masks = True

    def __init__(self, embed_dim: int, cfg: dict[str, Any], total_steps: int = 1) -> None:
        super().__init__()
        sop_cfg = SOPConfig.from_mapping(cfg, extra=HOST_KEYS)

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

    @torch.no_grad()
    def teacher_embedding(self, cls: Tensor) -> Tensor:  # noqa: D102
        return self.teacher_head(cls)

    @torch.no_grad()
    def teacher_distribution(self, cls: Tensor, step: int) -> Tensor:
        """Assignment to one SOP set of all P anchors drawn as training draws at ``step`` (no halving).

        The exact ``torch`` search, never ``auto``'s collectives: the diagnostics run on rank 0 alone.
        """
        c, bank = self.objective.cfg, self.objective.class_memory.bank
        anchors = sample_anchors(bank.shape[0], c.class_num_anchors, 1, self.objective.generator(step, 0), bank.device)
        sets = build_sops(bank, anchors[0], c.class_num_supports, c.smoothing, get_retrieval("torch"))
        return assign(self.teacher_head(cls).float(), sets, self.objective.teacher_temperature(step))

    def forward(self, s_cls, s_patch, t_cls, t_patch, masks, step):  # noqa: D102
        s_pz = t_pz = mem_pz = None
        if s_patch is not None and t_patch is not None and masks is not None:
            # the head sees only the masked patches and the patch-memory rows, as iBOT's does,
            # in one call per network with the [CLS] tokens (the head is row-wise)
            masked, memory = self.objective.select_patches(masks, step)
            dim = s_patch.shape[-1]
            s_z, s_pz = _head_rows(self.student_head, s_cls, s_patch.reshape(-1, dim)[masked])
            t_z, t_pz, mem_pz = _head_rows(
                self.teacher_head,
                t_cls,
                t_patch.reshape(-1, dim)[masked],
                t_patch[self.objective.cfg.memory_view].reshape(-1, dim)[memory],
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
    """Shared pieces of DINO and iBOT: lightly's DINO head and loss, temperature warm-up, last-layer freeze.

    ``head.freeze_last_layer_fraction`` of the run keeps the prototype layer fixed (the authors: the first
    of 100+ epochs), through lightly's ``cancel_last_layer_gradients`` counted in steps.
    ``koleo_weight`` > 0 adds lightly's KoLeo on the student's normalised bottleneck of the global views
    (DINOv2's regulariser; SOP offers the same on its embedding).
    """

    def __init__(self, embed_dim: int, cfg: dict[str, Any], total_steps: int = 1) -> None:
        super().__init__()
        head = cfg["head"]
        self.temps = cfg["temps"]
        self.koleo_weight = float(cfg.get("koleo_weight", 0.0))
        self.koleo = KoLeoLoss()
        freeze = math.ceil(float(head.get("freeze_last_layer_fraction", 0.0)) * total_steps)

        def make() -> nn.Module:
            return DINOProjectionHead(
                embed_dim,
                head["hidden_dim"],
                head["bottleneck_dim"],
                head["out_dim"],
                freeze_last_layer=freeze,
                norm_last_layer=bool(head.get("norm_last_layer", True)),
            )

        self.student_head = make()
        self.teacher_head = _teacher_of(self.student_head, make)
        self.cls_loss = DINOLoss(
            output_dim=head["out_dim"],
            student_temp=self.temps["student"],
            center_momentum=cfg.get("center_momentum", 0.9),
        )

    def after_backward(self, step: int) -> None:  # noqa: D102
        self.student_head.cancel_last_layer_gradients(step)

    def teacher_temp(self, step: int) -> float:
        t = self.temps
        return linear_warmup(step, t["warmup_steps"], t["warmup_teacher"], t["teacher"])

    @torch.no_grad()
    def teacher_embedding(self, cls: Tensor) -> Tensor:  # noqa: D102
        return _bottleneck(self.teacher_head, cls)

    @torch.no_grad()
    def teacher_distribution(self, cls: Tensor, step: int) -> Tensor:  # noqa: D102
        logits = self.teacher_head(cls) - self.cls_loss.center.reshape(1, -1)
        return (logits / self.teacher_temp(step)).softmax(dim=-1)

    def _cls_loss(self, s_cls: Tensor, t_cls: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """DINO's [CLS] loss and the KoLeo term (zero unless ``koleo_weight`` > 0)."""
        z = _bottleneck(self.student_head, s_cls)
        s_out = self.student_head.last_layer(z)
        t_out = self.teacher_head(t_cls)
        loss = self.cls_loss(list(t_out), list(s_out), teacher_temp=self.teacher_temp(step))
        koleo = loss.new_zeros(())
        if self.koleo_weight > 0:
            koleo = torch.stack([self.koleo(z[i].float()) for i in range(t_cls.shape[0])]).mean()
        return loss, koleo


class DINOBench(_PrototypeBench):
    """DINO: [CLS] only, learnable prototypes, centering (lightly ``DINOLoss``)."""

    def forward(self, s_cls, s_patch, t_cls, t_patch, masks, step):  # noqa: D102
        cls_loss, koleo = self._cls_loss(s_cls, t_cls, step)
        logs = {"loss_cls": float(cls_loss.detach()), "teacher_temp": self.teacher_temp(step)}
        if self.koleo_weight > 0:
            logs["loss_koleo"] = float(koleo.detach())
        return cls_loss + self.koleo_weight * koleo, logs


class IBOTBench(_PrototypeBench):
    """iBOT: DINO loss on [CLS] plus lightly's ``IBOTPatchLoss`` on masked patches (shared head)."""

    uses_masks = True

    def __init__(self, embed_dim: int, cfg: dict[str, Any], total_steps: int = 1) -> None:
        super().__init__(embed_dim, cfg, total_steps)
        self.patch_loss = IBOTPatchLoss(
            output_dim=cfg["head"]["out_dim"],
            student_temp=self.temps["student"],
            center_momentum=cfg.get("center_momentum", 0.9),
        )
        self.mim_weight = float(cfg.get("mim_weight", 1.0))

    def forward(self, s_cls, s_patch, t_cls, t_patch, masks, step):  # noqa: D102
        cls_loss, koleo = self._cls_loss(s_cls, t_cls, step)
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
        loss = cls_loss + self.mim_weight * patch_loss + self.koleo_weight * koleo
        logs = {
            "loss_cls": float(cls_loss.detach()),
            "loss_mim": float(patch_loss.detach()),
            "teacher_temp": self.teacher_temp(step),
        }
        if self.koleo_weight > 0:
            logs["loss_koleo"] = float(koleo.detach())
        return loss, logs


#: name -> factory(embed_dim, method_cfg, total_steps)
OBJECTIVES: dict[str, Callable[[int, dict[str, Any], int], BenchObjective]] = {
    "sop": SOPBench,
    "dino": DINOBench,
    "ibot": IBOTBench,
}


def build_objective(name: str, embed_dim: int, cfg: dict[str, Any], total_steps: int = 1) -> BenchObjective:
    """Instantiate the objective ``name`` from :data:`OBJECTIVES` (``total_steps`` sizes step-based schedules)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r} in `methods`; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](embed_dim, cfg, total_steps)
