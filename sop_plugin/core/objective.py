"""SOPObjective: the whole SOP training signal (memories, SOP sets, both losses) behind one module.

Hosts only feed it head outputs; everything random is drawn from generators seeded by (seed, step),
so every DDP rank and every resumed run draws the same SOP sets.
Paper: "Self-Organizing Visual Prototypes for Non-Parametric Representation Learning"
(Thalles Silva, Helio Pedrini, Adín Ramírez Rivera, ICML 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.config import SOPConfig
from sop_plugin.core.distributed import rank_and_world
from sop_plugin.core.losses import sop_global_loss, sop_mim_loss
from sop_plugin.core.memory import SupportMemory
from sop_plugin.core.retrieval import Retrieval, get_retrieval, lockstep
from sop_plugin.core.schedules import linear_warmup
from sop_plugin.core.seeding import seeded_generator
from sop_plugin.core.sops import SOPSet, assign, build_sop_sets, keep_random_sops
from sop_plugin.core.timing import NULL_TIMER, PhaseTimer


@dataclass
class StepRecord:
    """Detached tensors of one SOP step (references, not copies)."""

    step: int
    student_temp: float
    teacher_temp: float
    student_cls: Tensor  # [V, B, d]
    teacher_cls: Tensor  # [G, B, d]
    class_student_probs: Tensor  # [T, V, B, P]
    class_teacher_probs: Tensor  # [T, G, B, P]
    patch_student: Tensor | None = None  # [M, d] student patch embeddings
    patch_teacher: Tensor | None = None  # [M, d]
    patch_student_probs: Tensor | None = None  # [T, M, P]
    patch_teacher_probs: Tensor | None = None  # [T, M, P]
    patch_image_index: Tensor | None = None  # [M]
    num_images: int = 0
    losses: dict[str, Tensor] | None = None  # cls, mim, koleo, total


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

    ``timer.phase(label)`` times "sop_sets" (incl. "retrieval"), "assignment", "loss" and
    "memory_update" (:data:`NULL_TIMER` by default).
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
        self._select = ANCHOR_SELECTORS.get(self.cfg.anchor_selection)
        #: detached tensors of the last step, for ``sop_plugin.runtime.explain_nonfinite`` (no copies)
        self.last_step: StepRecord | None = None

    def generator(self, step: int, stream: int) -> torch.Generator:
        """CPU generator for (seed, step, stream): identical on every rank and after resume."""
        return seeded_generator(self.cfg.seed, step, stream)

    def teacher_temperature(self, step: int) -> float:
        c = self.cfg
        return linear_warmup(step, c.warmup_teacher_temp_steps, c.warmup_teacher_temp, c.teacher_temp)

    def build_sets(self, level: str, step: int) -> SOPSet:
        """Fresh stacked SOP sets [T, ...] for ``level`` in {"class", "patch"} at ``step``."""
        c = self.cfg
        memory: SupportMemory = getattr(self, f"{level}_memory")
        stream = 0 if level == "class" else 1
        p, t = getattr(c, f"{level}_num_anchors"), getattr(c, f"{level}_num_sets")
        anchors = self._select(memory.size, p, t, self.generator(step, stream), memory.bank.device)
        k = getattr(c, f"{level}_num_supports")
        # one search for all T sets (set t's anchors are excluded from set t only); every rank
        # builds these sets, so retrieval="auto" may agree on rank 0's backend here
        with lockstep(self.retrieval):
            sets = build_sop_sets(memory.bank, anchors, k, c.smoothing, self.retrieval, self.timer)
        keep = round(c.anchor_keep * p) if k > 0 else p  # the authors halve only SOPs with SEs
        return sets if keep == p else keep_random_sops(sets, keep, self.generator(step, 3 + stream))

    def select_patches(self, masks: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Flat token indices a host must embed for SOP-MIM, so heads run on few patches only.

        From student masks [G, B, N] bool: ``masked`` [M], indices into the G*B*N tokens of the
        global views, and ``memory`` [B], indices into the B*N tokens of view ``memory_view`` (one
        patch-memory row per image, drawn for the global batch from the (seed, step) generator, then
        this rank's slice, so DDP and single-process runs enqueue the same patches).
        """
        g, b, n = masks.shape
        masked = torch.nonzero(masks.reshape(-1)).flatten()
        rank, world = rank_and_world()
        pick = torch.randint(0, n, (b * world,), generator=self.generator(step, 2))
        memory = torch.arange(b) * n + pick[rank * b : (rank + 1) * b]
        return masked, memory.to(masks.device)

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

        ``student_cls`` [V, B, d]: student head outputs of all views (2 global first); ``teacher_cls``
        [G, B, d]: the teacher's of the G global views; ``masks`` [G, B, N] bool (True: masked for
        the student). Patch outputs come dense, [G, B, N, d], or pre-selected with
        :meth:`select_patches` (the head then sees only those): [M, d] masked rows plus
        ``memory_patches`` [B, d]. ``step`` seeds the SOP sets and drives the temperature warm-up;
        ``update_memory`` enqueues afterwards.
        """
        c = self.cfg
        problem = self._shape_problem(student_cls, teacher_cls, student_patches, teacher_patches, masks)
        if problem:
            raise ValueError(problem)
        teacher_cls = teacher_cls.detach()
        t_temp = self.teacher_temperature(step)
        v, b, d = student_cls.shape
        g = teacher_cls.shape[0]

        timer = self.timer
        s_flat, t_flat = student_cls.reshape(v * b, d), teacher_cls.reshape(g * b, d)
        s_probs, t_probs = self._assign("class", step, s_flat, t_flat)
        stats = self._class_stats(t_probs)
        s_probs = s_probs.view(-1, v, b, s_probs.shape[-1])
        t_probs = t_probs.view(-1, g, b, t_probs.shape[-1])
        with timer.phase("loss"):
            cls_loss = sop_global_loss(s_probs, t_probs)
        s_cls = student_cls.detach()
        record = StepRecord(step, c.student_temp, t_temp, s_cls, teacher_cls, s_probs.detach(), t_probs)

        zero = cls_loss.new_zeros(())
        mim_loss = zero
        if student_patches is not None and teacher_patches is not None and masks is not None:
            n = masks.shape[-1]
            masked_idx, memory_idx = self.select_patches(masks, step)
            if student_patches.ndim == 4:  # dense: select here
                if memory_patches is None:
                    memory_patches = teacher_patches[c.memory_view].reshape(b * n, d)[memory_idx]
                student_patches = student_patches.reshape(-1, d)[masked_idx]
                teacher_patches = teacher_patches.reshape(-1, d)[masked_idx]
            if c.mim_weight > 0:
                image_index = masked_idx // n
                sp, tp = self._assign("patch", step, student_patches, teacher_patches)
                with timer.phase("loss"):
                    mim_loss = sop_mim_loss(sp, tp, image_index, g * b)
                record.patch_student = student_patches.detach()
                record.patch_teacher = teacher_patches.detach()
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
        """Fresh SOP sets of ``level``; student [N, d] and teacher [M, d] -> [T, N, P], [T, M, P]."""
        with self.timer.phase("sop_sets"):
            sets = self.build_sets(level, step)
        with self.timer.phase("assignment"):
            s_probs = assign(student.float(), sets, self.cfg.student_temp)
            with torch.no_grad():
                t_probs = assign(teacher.detach().float(), sets, self.teacher_temperature(step))
        return s_probs, t_probs

    @torch.no_grad()
    def update_memories(self, teacher_cls: Tensor, memory_patches: Tensor | None = None) -> None:
        """Enqueue view ``memory_view``'s teacher [CLS] and, if given, ``memory_patches`` [B, d]."""
        self.class_memory.enqueue(teacher_cls[self.cfg.memory_view].float())
        if memory_patches is not None:
            self.patch_memory.enqueue(memory_patches.detach().float())

    def _shape_problem(
        self, s_cls: Tensor, t_cls: Tensor, s_p: Tensor | None, t_p: Tensor | None, masks: Tensor | None
    ) -> str | None:
        """What is wrong with the shapes of :meth:`forward`'s inputs (the first problem), or None."""
        d, view = self.cfg.dim, self.cfg.memory_view
        got = f"got {tuple(s_cls.shape)} and {tuple(t_cls.shape)}"
        if s_cls.ndim != 3 or t_cls.ndim != 3:
            return f"student_cls must be [V, B, d] and teacher_cls [G, B, d], {got}"
        if s_cls.shape[-1] != d or t_cls.shape[-1] != d:
            return f"embeddings {got}, SOP memories dim={d}: set dim to the head's bottleneck dimension"
        if t_cls.shape[1] != s_cls.shape[1] or t_cls.shape[0] > s_cls.shape[0]:
            return f"teacher_cls needs the student's batch size and at most its views, {got}"
        if t_cls.shape[0] <= view:
            return f"memory_view={view} needs at least {view + 1} teacher views, {got}"
        if s_p is None:
            return None
        if t_p is None or masks is None:
            return "student_patches need teacher_patches and masks"
        g, b = t_cls.shape[:2]
        if masks.dtype != torch.bool or masks.ndim != 3 or masks.shape[:2] != (g, b):
            return f"masks must be bool [G={g}, B={b}, N], got {masks.dtype} {tuple(masks.shape)}"
        got = f"got {tuple(s_p.shape)} and {tuple(t_p.shape)}"
        if s_p.shape != t_p.shape or s_p.shape[-1] != d:
            return f"student and teacher patch outputs must have equal shapes ending in d={d}, {got}"
        if s_p.ndim == 4 and s_p.shape[:3] != masks.shape:
            return f"dense patch outputs must be [G, B, N, d] with masks [G, B, N] = {tuple(masks.shape)}"
        m = int(masks.sum())
        if s_p.ndim == 2 and s_p.shape[0] != m:
            return (
                f"pre-selected patch outputs must have one row per masked patch ({m}), got {s_p.shape[0]}: "
                "use SOPObjective.select_patches"
            )
        return None

    @staticmethod
    def _class_stats(t_probs: Tensor) -> dict[str, float]:
        """Diagnostics of teacher assignments [T, N, P]: confidence and how evenly SOPs are used."""
        with torch.no_grad():
            max_prob = float(t_probs.max(dim=-1).values.mean())
            usage = t_probs.mean(dim=1)  # [T, P]
            ent = -(usage * usage.clamp_min(1e-12).log()).sum(-1).mean()
            norm_ent = float(ent / torch.log(torch.tensor(float(usage.shape[-1]))))
        return {"teacher_max_prob": max_prob, "sop_usage_entropy": norm_ent}
