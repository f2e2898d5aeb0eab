"""The two SOP losses (global SOP and SOP-MIM) as pure functions of assignment probabilities.

Both are cross-entropies between a teacher assignment (target, no gradient) and a student assignment
over the same SOP set; neither knows how the SOPs were built.
Paper: "Self-Organizing Visual Prototypes for Non-Parametric Representation Learning"
(Thalles Silva, Helio Pedrini, Adín Ramírez Rivera, ICML 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: probabilities are clamped to this before the log; a SE with weight 1 gives exact zeros.
LOG_EPS = 1e-12


def sop_global_loss(student_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """Class-level SOP loss: the mean over T sets, view pairs (teacher i, student j != i) and B images.

    Args:
        student_probs: [T, V, B, P] student assignments of all V views (globals first).
        teacher_probs: [T, G, B, P] teacher assignments of the G global views.
    """
    if student_probs.ndim != 4 or teacher_probs.ndim != 4:
        raise ValueError("sop_global_loss expects [T, V, B, P] and [T, G, B, P] tensors")
    t, v, b, _ = student_probs.shape
    g = teacher_probs.shape[1]
    if g > v or v < 2:
        raise ValueError(f"need at least 2 views and no more teacher than student views, got V={v}, G={g}")
    log_s = student_probs.clamp_min(LOG_EPS).log()
    ce = -torch.einsum("tgbp,tvbp->tgv", teacher_probs, log_s) / b  # [T, G, V]
    pair = ~torch.eye(g, v, dtype=torch.bool, device=ce.device)
    return ce[:, pair].mean()


def sop_mim_loss(student_probs: Tensor, teacher_probs: Tensor, image_idx: Tensor, num_images: int) -> Tensor:
    """Patch-level SOP-MIM loss over masked patches only.

    Cross-entropy per masked patch, averaged over each image's masked patches, summed over images and
    divided by ``num_images`` (an image without a masked patch counts as zero, as in iBOT and lightly's
    ``IBOTPatchLoss``), then averaged over sets.

    Args:
        student_probs: [T, M, P] student assignments of the M masked patches.
        teacher_probs: [T, M, P] teacher assignments of the same patches (unmasked view).
        image_idx: [M] long, which image (0..num_images-1) each patch belongs to.
        num_images: number of images (views x batch) the patches come from.
    """
    if student_probs.shape != teacher_probs.shape or student_probs.ndim != 3:
        raise ValueError("sop_mim_loss expects two [T, M, P] tensors of equal shape")
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    t = student_probs.shape[0]
    if student_probs.shape[1] == 0:
        return student_probs.sum() * 0.0
    ce = -(teacher_probs * student_probs.clamp_min(LOG_EPS).log()).sum(-1)  # [T, M]
    counts = torch.bincount(image_idx, minlength=num_images).clamp_min(1).to(ce.dtype)
    per_patch_w = (1.0 / counts)[image_idx]  # [M]
    return (ce * per_patch_w).sum() / (num_images * t)
