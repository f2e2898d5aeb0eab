"""SOPObjective: the whole SOP training signal behind one module.

It owns the class and patch memories, builds fresh SOP sets every step, computes the
global SOP loss on [CLS] embeddings and SOP-MIM on masked patch embeddings, and then
enqueues teacher embeddings. Hosts (the benchmark, solo-learn) only feed it head
outputs; everything random is drawn from generators seeded by (seed, step), so every
DDP rank and every resumed run draws the same SOP sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.config import SOPConfig
from sop_plugin.core.diagnostics import StepRecord, explain_nonfinite
from sop_plugin.core.distributed import rank_and_world
from sop_plugin.core.losses import sop_global_loss, sop_mim_loss
from sop_plugin.core.memory import SupportMemory
from sop_plugin.core.retrieval import Retrieval, get_retrieval, lockstep
from sop_plugin.core.schedules import linear_warmup
from sop_plugin.core.seeding import seeded_generator
from sop_plugin.core.sops import SOPSet, assign, build_sop_sets
from sop_plugin.core.timing import NULL_TIMER, PhaseTimer


@dataclass
class SOPLossOutput:
    """What one step of the objective returns (``loss`` carries the gradient)."""

    loss: Tensor
    cls_loss: Tensor
    mim_loss: Tensor
    koleo_loss: Tensor
    teacher_temp: float
    stats: dict[str, float] = field(default_factory=dict)


class SOPObjective(nn.Module):
    """Owns the SOP memories and computes L = L_cls + mim_weight L_mim + koleo_weight L_koleo.

    Args:
        cfg: the SOP settings.
        retrieval: the SE search backend (default: built from ``cfg.retrieval``).
        koleo: a module [B, d] -> scalar for the KoLeo term (the hosts pass lightly's
            ``KoLeoLoss``; core stays free of lightly); needed when ``cfg.koleo_weight > 0``.

    Attributes:
        timer: phases "sop_sets" (incl. "retrieval"), "assignment", "loss" and "memory_update"
            are timed through ``timer.phase(label)``; :data:`NULL_TIMER` by default.
    """

    def __init__(
        self, cfg: SOPConfig | None = None, retrieval: Retrieval | None = None, koleo: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.cfg = (cfg or SOPConfig()).validate()
        if self.cfg.koleo_weight > 0 and koleo is None:
            raise ValueError(
                f"koleo_weight={self.cfg.koleo_weight} needs a KoLeo loss module: pass "
                "SOPObjective(cfg, koleo=lightly.loss.KoLeoLoss()) or set koleo_weight=0"
            )
        self.koleo = koleo
        self.timer: PhaseTimer = NULL_TIMER
        self.class_memory = SupportMemory(self.cfg.class_memory_size, self.cfg.dim, seed=self.cfg.seed)
        self.patch_memory = SupportMemory(self.cfg.patch_memory_size, self.cfg.dim, seed=self.cfg.seed + 1)
        self.retrieval = retrieval or get_retrieval(self.cfg.retrieval)
        self._select = ANCHOR_SELECTORS[self.cfg.anchor_selection]
        #: detached tensors of the last step, for :meth:`explain_nonfinite` (no copies)
        self.last_step: StepRecord | None = None

    # ---------------------------------------------------------------- randomness
    def generator(self, step: int, stream: int) -> torch.Generator:
        """CPU generator for (seed, step, stream): identical on every rank and after resume."""
        return seeded_generator(self.cfg.seed, step, stream)

    def teacher_temperature(self, step: int) -> float:
        c = self.cfg
        return linear_warmup(step, c.warmup_teacher_temp_steps, c.warmup_teacher_temp, c.teacher_temp)

    # ---------------------------------------------------------------- SOP sets
    def build_sets(self, level: str, step: int) -> SOPSet:
        """Fresh stacked SOP sets [T, ...] for ``level`` in {"class", "patch"} at ``step``."""
        c = self.cfg
        memory: SupportMemory = getattr(self, f"{level}_memory")
        stream = 0 if level == "class" else 1
        anchors = self._select(
            memory.size,
            getattr(c, f"{level}_num_anchors"),
            getattr(c, f"{level}_num_sets"),
            self.generator(step, stream),
            memory.bank.device,
        )
        k = getattr(c, f"{level}_num_supports")
        # one search for all T sets (set t's anchors are excluded from set t only); every rank
        # builds these sets, so retrieval="auto" may agree on rank 0's backend here
        with lockstep(self.retrieval):
            return build_sop_sets(memory.bank, anchors, k, c.smoothing, self.retrieval, self.timer)

    # ---------------------------------------------------------------- patch selection
    def memory_patch_index(
        self, batch_size: int, num_patches: int, step: int, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Which patch of global view 0 each local image sends to the patch memory: [B] long.

        Drawn for the global batch from the (seed, step) generator, then this rank's slice,
        so DDP and single-process runs enqueue the same patches.
        """
        rank, world = rank_and_world()
        pick = torch.randint(0, num_patches, (batch_size * world,), generator=self.generator(step, 2))
        return pick[rank * batch_size : (rank + 1) * batch_size].to(device)

    def select_patches(self, masks: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Flat token indices a host must embed for SOP-MIM, so heads run on few patches only.

        Args:
            masks: [G, B, N] bool student masks.
        Returns:
            masked: [M] indices into the G*B*N tokens of the global views (masked patches);
            memory: [B] indices into the B*N tokens of global view 0 (patch-memory rows).
        """
        g, b, n = masks.shape
        masked = torch.nonzero(masks.reshape(-1)).flatten()
        pick = self.memory_patch_index(b, n, step, masks.device)
        memory = torch.arange(b, device=masks.device) * n + pick
        return masked, memory

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        student_cls: Tensor,
        teacher_cls: Tensor,
        student_patches: Tensor | None = None,
        teacher_patches: Tensor | None = None,
        masks: Tensor | None = None,
        step: int = 0,
        update_memory: bool = True,
        memory_patches: Tensor | None = None,
    ) -> SOPLossOutput:
        """One step of SOP.

        Patch embeddings come either dense, [G, B, N, d] for every patch of the global views,
        or pre-selected with :meth:`select_patches` (cheaper: the head only sees those), as
        [M, d] rows of the masked patches plus ``memory_patches`` [B, d].

        Args:
            student_cls: [V, B, d] student head outputs of all views (2 global first, then local).
            teacher_cls: [G, B, d] teacher head outputs of the G global views (no gradient needed).
            student_patches: student outputs of the masked global views' patches (dense or [M, d]).
            teacher_patches: teacher outputs of the same patches in the unmasked views.
            masks: [G, B, N] bool, True where the student's patch was masked.
            step: global optimisation step (seeds the SOP sets, drives the temperature warm-up).
            update_memory: enqueue teacher embeddings after computing the loss.
            memory_patches: [B, d] teacher patch rows for the patch memory (pre-selected form).
        """
        c = self.cfg
        self._check_shapes(student_cls, teacher_cls, student_patches, teacher_patches, masks)
        teacher_cls = teacher_cls.detach()
        t_temp = self.teacher_temperature(step)
        v, b, d = student_cls.shape
        g = teacher_cls.shape[0]

        timer = self.timer
        s_probs, t_probs = self._assign("class", step, student_cls.reshape(v * b, d), teacher_cls.reshape(g * b, d))
        tn = s_probs.shape[0]
        with timer.phase("loss"):
            cls_loss = sop_global_loss(s_probs.view(tn, v, b, -1), t_probs.view(tn, g, b, -1))
        stats = self._class_stats(t_probs)
        record = StepRecord(step, c.student_temp, t_temp, student_cls.detach(), teacher_cls,
                            s_probs.detach().view(tn, v, b, -1), t_probs.view(tn, g, b, -1))  # fmt: skip

        zero = cls_loss.new_zeros(())
        mim_loss = zero
        if student_patches is not None and teacher_patches is not None and masks is not None:
            n = masks.shape[-1]
            masked_idx, memory_idx = self.select_patches(masks, step)
            if student_patches.ndim == 4:  # dense: select here
                if memory_patches is None:
                    memory_patches = teacher_patches[0].reshape(b * n, d)[memory_idx]
                student_patches = student_patches.reshape(-1, d)[masked_idx]
                teacher_patches = teacher_patches.reshape(-1, d)[masked_idx]
            if c.mim_weight > 0:
                image_index = masked_idx // n
                sp, tp = self._assign("patch", step, student_patches, teacher_patches)
                with timer.phase("loss"):
                    mim_loss = sop_mim_loss(sp, tp, image_index, g * b)
                record.patch_student, record.patch_teacher = student_patches.detach(), teacher_patches.detach()
                record.patch_student_probs, record.patch_teacher_probs = sp.detach(), tp
                record.patch_image_index, record.num_images = image_index, g * b
            stats["masked_fraction"] = float(masks.float().mean())

        koleo = zero
        if c.koleo_weight > 0:
            assert self.koleo is not None
            koleo = torch.stack([self.koleo(student_cls[i].float()) for i in range(g)]).mean()

        loss = cls_loss + c.mim_weight * mim_loss + c.koleo_weight * koleo
        parts = {"cls": cls_loss, "mim": mim_loss, "koleo": koleo, "total": loss}
        record.losses = {k: x.detach() for k, x in parts.items()}
        self.last_step = record
        if update_memory:
            with timer.phase("memory_update"):
                self.update_memories(teacher_cls, memory_patches)
        return SOPLossOutput(loss, cls_loss, mim_loss, koleo, t_temp, stats)

    def _assign(self, level: str, step: int, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Fresh SOP sets of ``level``; student rows [N, d] and teacher rows [M, d] -> [T, N, P], [T, M, P]."""
        with self.timer.phase("sop_sets"):
            sets = self.build_sets(level, step)
        with self.timer.phase("assignment"):
            s_probs = assign(student.float(), sets, self.cfg.student_temp)
            with torch.no_grad():
                t_probs = assign(teacher.detach().float(), sets, self.teacher_temperature(step))
        return s_probs, t_probs

    @torch.no_grad()
    def update_memories(self, teacher_cls: Tensor, memory_patches: Tensor | None = None) -> None:
        """Enqueue global view 0's teacher [CLS] of every image and, if given, one patch row per image."""
        self.class_memory.enqueue(teacher_cls[0].float())
        if memory_patches is not None:
            self.patch_memory.enqueue(memory_patches.detach().float())

    def explain_nonfinite(self) -> str:
        """Which part of the last step is non-finite (loss, SOP set, inputs, memories) and why."""
        return explain_nonfinite(self.last_step, self.class_memory, self.patch_memory)

    # ---------------------------------------------------------------- helpers
    def _check_shapes(
        self,
        student_cls: Tensor,
        teacher_cls: Tensor,
        student_patches: Tensor | None,
        teacher_patches: Tensor | None,
        masks: Tensor | None,
    ) -> None:
        d = self.cfg.dim
        if student_cls.ndim != 3 or teacher_cls.ndim != 3:
            raise ValueError(
                f"student_cls must be [V, B, d] and teacher_cls [G, B, d], got "
                f"{tuple(student_cls.shape)} and {tuple(teacher_cls.shape)}"
            )
        if student_cls.shape[-1] != d or teacher_cls.shape[-1] != d:
            raise ValueError(
                f"embeddings have dim {student_cls.shape[-1]}/{teacher_cls.shape[-1]} but the SOP "
                f"memories have dim={d}: set dim to the head's bottleneck dimension"
            )
        if teacher_cls.shape[1] != student_cls.shape[1] or teacher_cls.shape[0] > student_cls.shape[0]:
            raise ValueError("teacher_cls must have the student's batch size and at most its number of views")
        if student_patches is not None:
            if teacher_patches is None or masks is None:
                raise ValueError("student_patches need teacher_patches and masks")
            g, b = teacher_cls.shape[:2]
            if masks.dtype != torch.bool or masks.ndim != 3 or masks.shape[:2] != (g, b):
                raise ValueError(f"masks must be bool [G={g}, B={b}, N], got {masks.dtype} {tuple(masks.shape)}")
            if student_patches.shape != teacher_patches.shape or student_patches.shape[-1] != d:
                raise ValueError(
                    f"student and teacher patch outputs must have equal shapes ending in d={d}, got "
                    f"{tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
                )
            if student_patches.ndim == 4 and student_patches.shape[:3] != masks.shape:
                raise ValueError(
                    f"dense patch outputs must be [G, B, N, d] with masks [G, B, N] = {tuple(masks.shape)}"
                )
            if student_patches.ndim == 2 and student_patches.shape[0] != int(masks.sum()):
                raise ValueError(
                    f"pre-selected patch outputs must have one row per masked patch ({int(masks.sum())}), "
                    f"got {student_patches.shape[0]}: use SOPObjective.select_patches"
                )

    @staticmethod
    def _class_stats(t_probs: Tensor) -> dict[str, float]:
        """Diagnostics: teacher confidence and how evenly the SOPs are used."""
        with torch.no_grad():
            max_prob = float(t_probs.max(dim=-1).values.mean())
            usage = t_probs.mean(dim=1)  # [T, P]
            ent = -(usage * usage.clamp_min(1e-12).log()).sum(-1).mean()
            norm_ent = float(ent / torch.log(torch.tensor(float(usage.shape[-1]))))
        return {"teacher_max_prob": max_prob, "sop_usage_entropy": norm_ent}
