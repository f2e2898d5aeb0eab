"""SOPObjective: the whole SOP training signal behind one module.

It owns the class and patch memories, builds fresh SOP sets every step, computes the
global SOP loss on [CLS] embeddings and SOP-MIM on masked patch embeddings, and then
enqueues teacher embeddings. Hosts (the benchmark, solo-learn) only feed it head
outputs; everything random is drawn from generators seeded by (seed, step), so every
DDP rank and every resumed run draws the same SOP sets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.diagnostics import StepRecord, explain_nonfinite
from sop_plugin.core.losses import koleo_loss, sop_global_loss, sop_mim_loss
from sop_plugin.core.memory import SupportMemory
from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, Retrieval, get_retrieval
from sop_plugin.core.retrieval_auto import lockstep
from sop_plugin.core.schedules import linear_warmup
from sop_plugin.core.sops import SOPSet
from sop_plugin.core.sops_batched import assign_sets, build_sop_sets, stack_sets


@dataclass
class SOPConfig:
    """Every SOP hyper-parameter; defaults follow DESIGN.md section 1 / the reference code."""

    dim: int = 256
    class_memory_size: int = 65536
    patch_memory_size: int = 8192
    class_num_sets: int = 4
    class_num_anchors: int = 64
    class_num_supports: int = 8
    patch_num_sets: int = 1
    patch_num_anchors: int = 512
    patch_num_supports: int = 0
    smoothing: float = 0.1
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    mim_weight: float = 1.0
    koleo_weight: float = 0.0
    anchor_selection: str = "uniform"
    retrieval: str = "torch"
    seed: int = 0

    def validate(self, global_batch_size: int | None = None) -> SOPConfig:
        """Raise ``ValueError`` naming the setting and the fix for any inconsistent value."""
        errors: list[str] = []
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)} must be > 0")
        if not 0.0 <= self.smoothing < 1.0:
            errors.append(f"smoothing={self.smoothing} must be in [0, 1)")
        for name in ("mim_weight", "koleo_weight"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.dim < 1:
            errors.append(f"dim={self.dim} must be >= 1")
        for level in ("class", "patch"):
            size = getattr(self, f"{level}_memory_size")
            p = getattr(self, f"{level}_num_anchors")
            k = getattr(self, f"{level}_num_supports")
            t = getattr(self, f"{level}_num_sets")
            if t < 1:
                errors.append(f"{level}_num_sets={t} must be >= 1")
            if p < 2:
                errors.append(f"{level}_num_anchors={p} must be >= 2 (a SOP set needs two regions)")
            if k < 0:
                errors.append(f"{level}_num_supports={k} must be >= 0")
            if p * (k + 1) > size:
                errors.append(
                    f"{level}_num_anchors x ({level}_num_supports + 1) = {p * (k + 1)} exceeds "
                    f"{level}_memory_size={size}: lower anchors/supports or enlarge the memory"
                )
            if global_batch_size is not None and global_batch_size > size:
                errors.append(
                    f"global batch {global_batch_size} exceeds {level}_memory_size={size}: "
                    f"the memory must hold at least one step of embeddings"
                )
        if self.anchor_selection not in ANCHOR_SELECTORS:
            errors.append(f"anchor_selection={self.anchor_selection!r}; choose one of {sorted(ANCHOR_SELECTORS)}")
        if self.retrieval not in RETRIEVAL_BACKENDS:
            errors.append(f"retrieval={self.retrieval!r}; choose one of {sorted(RETRIEVAL_BACKENDS)}")
        if errors:
            raise ValueError("invalid SOP settings:\n  - " + "\n  - ".join(errors))
        return self

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class SOPLossOutput:
    """What one step of the objective returns (``loss`` carries the gradient)."""

    loss: Tensor
    cls_loss: Tensor
    mim_loss: Tensor
    koleo_loss: Tensor
    teacher_temp: float
    stats: dict[str, float] = field(default_factory=dict)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def assign_batched(z: Tensor, supports: Tensor, votes: Tensor, temperature: float) -> Tensor:
    """:func:`assign` for T stacked sets at once: z [N, d] -> [T, N, P]."""
    logits = torch.einsum("nd,trd->tnr", z, supports.to(z.dtype)) / temperature
    return torch.bmm(logits.softmax(dim=-1), votes.to(z.dtype))


class SOPObjective(nn.Module):
    """Owns the SOP memories and computes L = L_cls + mim_weight L_mim + koleo_weight L_koleo."""

    def __init__(self, cfg: SOPConfig | None = None, retrieval: Retrieval | None = None) -> None:
        super().__init__()
        self.cfg = (cfg or SOPConfig()).validate()
        self.class_memory = SupportMemory(self.cfg.class_memory_size, self.cfg.dim, seed=self.cfg.seed)
        self.patch_memory = SupportMemory(self.cfg.patch_memory_size, self.cfg.dim, seed=self.cfg.seed + 1)
        self.retrieval = retrieval or get_retrieval(self.cfg.retrieval)
        self._select = ANCHOR_SELECTORS[self.cfg.anchor_selection]
        #: detached tensors of the last step, for :meth:`explain_nonfinite` (no copies)
        self.last_step: StepRecord | None = None

    # ---------------------------------------------------------------- randomness
    def generator(self, step: int, stream: int) -> torch.Generator:
        """CPU generator for (seed, step, stream): identical on every rank and after resume."""
        return torch.Generator().manual_seed(((self.cfg.seed * 1_000_003 + step) * 16 + stream) % (2**63))

    def teacher_temperature(self, step: int) -> float:
        c = self.cfg
        return linear_warmup(step, c.warmup_teacher_temp_steps, c.warmup_teacher_temp, c.teacher_temp)

    # ---------------------------------------------------------------- SOP sets
    def build_sets(self, level: str, step: int) -> list[SOPSet]:
        """Fresh SOP sets for ``level`` in {"class", "patch"} at ``step``."""
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
            return build_sop_sets(memory.bank, anchors, k, c.smoothing, self.retrieval)

    # ---------------------------------------------------------------- patch selection
    def memory_patch_index(self, batch_size: int, num_patches: int, step: int, device: torch.device | str = "cpu") -> Tensor:
        """Which patch of global view 0 each local image sends to the patch memory: [B] long.

        Drawn for the global batch from the (seed, step) generator, then this rank's slice,
        so DDP and single-process runs enqueue the same patches.
        """
        rank, world = _rank_and_world()
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

        cls_sets = stack_sets(self.build_sets("class", step))  # no dense vote matrices (see assign_sets)
        s_probs = assign_sets(student_cls.reshape(v * b, d).float(), cls_sets, c.student_temp)
        with torch.no_grad():
            t_probs = assign_sets(teacher_cls.reshape(g * b, d).float(), cls_sets, t_temp)
        tn = cls_sets.supports.shape[0]
        cls_loss = sop_global_loss(s_probs.view(tn, v, b, -1), t_probs.view(tn, g, b, -1))
        stats = self._class_stats(t_probs)
        record = StepRecord(step, c.student_temp, t_temp, student_cls.detach(), teacher_cls,
                            s_probs.detach().view(tn, v, b, -1), t_probs.view(tn, g, b, -1))

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
                patch_sets = stack_sets(self.build_sets("patch", step))
                sp = assign_sets(student_patches.float(), patch_sets, c.student_temp)
                with torch.no_grad():
                    tp = assign_sets(teacher_patches.detach().float(), patch_sets, t_temp)
                mim_loss = sop_mim_loss(sp, tp, image_index, g * b)
                record.patch_student, record.patch_teacher = student_patches.detach(), teacher_patches.detach()
                record.patch_student_probs, record.patch_teacher_probs = sp.detach(), tp
                record.patch_image_index, record.num_images = image_index, g * b
            stats["masked_fraction"] = float(masks.float().mean())

        koleo = zero
        if c.koleo_weight > 0:
            koleo = torch.stack([koleo_loss(student_cls[i].float()) for i in range(g)]).mean()

        loss = cls_loss + c.mim_weight * mim_loss + c.koleo_weight * koleo
        record.losses = {"cls": cls_loss.detach(), "mim": mim_loss.detach(), "koleo": koleo.detach(),
                         "total": loss.detach()}
        self.last_step = record
        if update_memory:
            self.update_memories(teacher_cls, memory_patches)
        return SOPLossOutput(loss, cls_loss, mim_loss, koleo, t_temp, stats)

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
                raise ValueError(f"dense patch outputs must be [G, B, N, d] with masks [G, B, N] = {tuple(masks.shape)}")
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
