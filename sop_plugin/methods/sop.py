"""SOP as a method of both hosts (the bench and solo-learn).

One head (:class:`~sop_plugin.core.SOPHead`) is shared by the [CLS] and patch tokens; the whole
SOP signal (memories, SOP sets, global SOP loss, SOP-MIM, memory updates) is
:class:`~sop_plugin.core.SOPObjective`. The heads see only what the loss reads: the [CLS]
tokens, the masked patches and the one patch per image that feeds the patch memory.
Paper: "Self-Organizing Visual Prototypes for Non-Parametric Representation Learning"
(Thalles Silva, Helio Pedrini, Adín Ramírez Rivera, ICML 2025, arXiv 2505.21533).
"""

from __future__ import annotations

import dataclasses

import torch
from lightly.loss import KoLeoLoss
from torch import Tensor, nn

from sop_plugin.core import (
    SOPConfig,
    SOPHead,
    SOPObjective,
    assign,
    build_sops,
    gather_across_ranks,
    get_retrieval,
    sample_anchors,
)
from sop_plugin.methods.base import Method, MethodOutput, Tokens, masks_text, teacher_of, temperature_text
from sop_plugin.methods.config import MaskConfig
from sop_plugin.methods.registry import register_method
from sop_plugin.runtime.explain import explain_nonfinite


def head_rows(head: nn.Module, cls: Tensor, *rows: Tensor) -> tuple[Tensor, ...]:
    """``head`` on [CLS] tokens [V, B, D] and extra token rows [n_i, D] in one call (fewer, larger GEMMs)."""
    flat = cls.reshape(-1, cls.shape[-1])
    parts = head(torch.cat([flat, *rows])).split([flat.shape[0], *(r.shape[0] for r in rows)])
    return (parts[0].reshape(*cls.shape[:-1], -1), *parts[1:])


@register_method("sop")
class SOPMethod(Method):
    """SOP's heads, objective and memories.

    Args:
        embed_dim: the backbone's token dimension D.
        cfg: the SOP settings.
        masks: the student's block masks (the authors': every global view at ratio 0.3); None or
            ``cfg.mim_weight == 0``: no SOP-MIM, no masks.
    """

    config_class = SOPConfig
    default_masks = MaskConfig(prob=1.0, ratio=(0.3, 0.3))

    def __init__(self, embed_dim: int, cfg: SOPConfig, masks: MaskConfig | None = default_masks) -> None:
        super().__init__(masks if cfg.mim_weight > 0 else None)

        def make() -> nn.Module:
            return SOPHead(embed_dim, cfg.head_hidden_dim, cfg.dim, cfg.head_num_layers)

        self.student_head = make()
        self.teacher_head = teacher_of(self.student_head, make)
        self.objective = SOPObjective(cfg, koleo=KoLeoLoss())
        # dataset index of the image behind each class-memory row (-1: initial random row),
        # kept in step with the memory so SOPs can be shown as images
        self.register_buffer("class_ids", torch.full((cfg.class_memory_size,), -1, dtype=torch.long))

    @property
    def cfg(self) -> SOPConfig:
        """The SOP settings in force."""
        return self.objective.cfg

    def set_step_schedule(self, warmup_teacher_temp_steps: int, freeze_last_layer_steps: int = 0) -> None:
        """The teacher-temperature warm-up in steps (SOP has no prototype layer to freeze)."""
        cfg = dataclasses.replace(self.cfg, warmup_teacher_temp_steps=int(warmup_teacher_temp_steps))
        self.objective.cfg = cfg.validate()

    def teacher_temperature(self, step: int) -> float:  # noqa: D102
        return self.objective.teacher_temperature(step)

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
        k = self.cfg.class_num_supports
        p = min(num_sops, filled.numel() // (k + 1))
        anchors = filled[torch.randperm(filled.numel(), generator=gen)[:p]]
        bank = self.objective.class_memory.bank
        # the pool is the real rows only, so that every SE has an image
        local = torch.searchsorted(filled, anchors)
        sops = build_sops(bank[filled], local, k, self.cfg.smoothing, self.objective.retrieval)
        rows = filled[sops.memory_index].view(p, sops.num_supports + 1)
        ids = self.class_ids[rows]
        return ids[:, 0], ids[:, 1:], sops.weights.view(p, sops.num_supports + 1)[:, 1:]

    @torch.no_grad()
    def teacher_embedding(self, cls: Tensor) -> Tensor:  # noqa: D102
        return self.teacher_head(cls)

    @torch.no_grad()
    def teacher_distribution(self, cls: Tensor, step: int) -> Tensor:
        """Assignment to one SOP set of all P anchors drawn as training draws at ``step`` (no halving).

        The exact ``torch`` search, never ``auto``'s collectives: the diagnostics run on rank 0 alone.
        """
        c, bank = self.cfg, self.objective.class_memory.bank
        generator = self.objective.generator(step, 0)
        anchors = sample_anchors(bank.shape[0], c.class_num_anchors, 1, generator, bank.device)
        sets = build_sops(bank, anchors[0], c.class_num_supports, c.smoothing, get_retrieval("torch"))
        return assign(self.teacher_head(cls).float(), sets, self.teacher_temperature(step))

    def forward(self, tokens: Tokens, step: int) -> MethodOutput:
        """Both SOP losses on the head outputs of ``tokens``; enqueues the teacher embeddings."""
        s_cls, t_cls, masks = tokens.student_cls, tokens.teacher_cls, tokens.masks
        s_pz = t_pz = mem_pz = None
        if self.uses_masks and masks is not None:
            assert tokens.student_patches is not None and tokens.teacher_patches is not None
            masked, memory = self.objective.select_patches(masks, step)
            dim = tokens.student_patches.shape[-1]
            s_rows = tokens.student_patches.reshape(-1, dim)[masked]
            t_rows = tokens.teacher_patches.reshape(-1, dim)[masked]
            mem_rows = tokens.teacher_patches[self.cfg.memory_view].reshape(-1, dim)[memory]
            s_z, s_pz = head_rows(self.student_head, s_cls, s_rows)
            t_z, t_pz, mem_pz = head_rows(self.teacher_head, t_cls, t_rows, mem_rows)
        else:
            masks = None
            s_z = self.student_head(s_cls)
            t_z = self.teacher_head(t_cls)
        out = self.objective(s_z, t_z, s_pz, t_pz, masks, step=step, memory_patches=mem_pz)
        logs = {"loss_cls": float(out.cls_loss.detach()), "loss_mim": float(out.mim_loss.detach())}
        if self.cfg.koleo_weight > 0:
            logs["loss_koleo"] = float(out.koleo_loss.detach())
        logs["teacher_temp"] = out.teacher_temp
        logs.update(out.stats)
        return MethodOutput(out.loss, logs)

    def explain_nonfinite(self, output: MethodOutput) -> str:
        """Loss per SOP set, inputs and memories (:func:`~sop_plugin.runtime.explain.explain_nonfinite`)."""
        return explain_nonfinite(self.objective)

    @classmethod
    def describe(cls, config: SOPConfig, masks: MaskConfig | None) -> dict[str, str]:  # noqa: D102
        c = config
        return {
            "teacher_temp": temperature_text(c),
            "masks": masks_text(masks if c.mim_weight > 0 else None),
            "koleo_weight": f"{c.koleo_weight:g}",
            "own": f"anchor_keep {c.anchor_keep:g}, memory_view {c.memory_view}",
        }
