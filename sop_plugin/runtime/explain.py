"""Name what went non-finite in a SOP step: which loss, which SOP set, inputs, memories.

:class:`~sop_plugin.core.SOPObjective` keeps detached references to the tensors of its last
step (``last_step``, a :class:`~sop_plugin.core.objective.StepRecord`, no copies); the functions
here turn them into per-set losses and a one-paragraph explanation, computed only when a host's
non-finite guard asks (after it saw a non-finite loss), so the happy path pays nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sop_plugin.core import SOPObjective, SupportMemory, sop_global_loss, sop_mim_loss
from sop_plugin.core.objective import StepRecord


def _nonfinite(x: Tensor | None) -> int:
    return 0 if x is None else int((~torch.isfinite(x)).sum())


def per_set_losses(record: StepRecord) -> tuple[list[float], list[float] | None]:
    """Class-level and patch-level loss of every SOP set of the recorded step."""
    s, t = record.class_student_probs, record.class_teacher_probs
    cls = [float(sop_global_loss(s[i : i + 1], t[i : i + 1])) for i in range(s.shape[0])]
    mim = None
    if record.patch_student_probs is not None and record.patch_teacher_probs is not None:
        sp, tp = record.patch_student_probs, record.patch_teacher_probs
        assert record.patch_image_index is not None
        mim = [
            float(sop_mim_loss(sp[i : i + 1], tp[i : i + 1], record.patch_image_index, record.num_images))
            for i in range(sp.shape[0])
        ]
    return cls, mim


def memory_state(name: str, memory: SupportMemory) -> str:
    """``name``: size, pointer, rows with non-finite values, rows off the unit sphere."""
    bank = memory.bank
    bad_rows = int((~torch.isfinite(bank)).any(dim=1).sum())
    norms = bank.norm(dim=1)
    off = int(((norms - 1).abs() > 1e-3).sum())
    state = f"{name} memory {memory.size}x{memory.dim}, ptr {int(memory.ptr)}"
    if bad_rows:
        return f"{state}: {bad_rows} rows hold non-finite values (a step enqueued NaN/inf embeddings)"
    if off:
        return f"{state}: {off} rows are not unit vectors"
    return f"{state}: all rows finite unit vectors"


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{i}: {v:.4g}" for i, v in enumerate(values)) + "]"


def _per_set(level: str, values: list[float]) -> str:
    """``level`` loss of every SOP set, and which sets are non-finite."""
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    return f"{level} loss per SOP set {_fmt(values)}" + (f" -> non-finite in set(s) {bad}" if bad else "")


def explain_nonfinite(objective: SOPObjective) -> str:
    """A paragraph naming the non-finite component(s) of the objective's last step and the likely cause."""
    record, class_memory, patch_memory = objective.last_step, objective.class_memory, objective.patch_memory
    mems = f"{memory_state('class', class_memory)}; {memory_state('patch', patch_memory)}"
    if record is None:
        return f"no SOP step recorded yet; {mems}"
    parts: list[str] = []
    losses = record.losses or {}
    names = {"cls": "class loss (global SOP)", "mim": "patch loss (SOP-MIM)", "koleo": "KoLeo"}
    bad_components = [names[k] for k in names if k in losses and not math.isfinite(float(losses[k]))]
    cls_sets, mim_sets = per_set_losses(record)
    components = ", ".join(bad_components) or "none of cls/mim/koleo (the sum)"
    parts.append(f"non-finite component(s): {components}")
    parts.append(_per_set("class", cls_sets))
    if mim_sets is not None:
        parts.append(_per_set("patch", mim_sets))
    inputs = {
        "student [CLS] embeddings": record.student_cls,
        "teacher [CLS] embeddings": record.teacher_cls,
        "student patch embeddings": record.patch_student,
        "teacher patch embeddings": record.patch_teacher,
    }
    bad_inputs = [f"{k} ({_nonfinite(v)} values)" for k, v in inputs.items() if _nonfinite(v)]
    parts.append("non-finite inputs: " + (", ".join(bad_inputs) if bad_inputs else "none"))
    temps = f"student {record.student_temp:g}, teacher {record.teacher_temp:g}"
    parts.append(f"temperatures: {temps} (step {record.step})")
    parts.append(f"memories after the step's enqueue: {mems}")
    if any("student" in b for b in bad_inputs):
        cause = "the student network diverged: lower the learning rate or check the input data"
    elif bad_inputs:
        cause = "the teacher produced non-finite embeddings: check the EMA and the input data"
    elif "non-finite" in mems:
        cause = "a memory holds non-finite rows from an earlier step"
    else:
        cause = (
            "the assignments under- or overflowed: raise the temperatures (the SOP settings "
            "student_temp / teacher_temp) or lower the learning rate"
        )
    parts.append(f"likely cause: {cause}")
    return "; ".join(parts)
