"""Step-indexed schedules (pure functions, so a resumed run computes the same values)."""

from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total_steps``), constant after."""
    if total_steps <= 0:
        return end
    t = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * max(step, 0) / warmup_steps


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Learning-rate shape: linear 0 -> ``peak`` over warm-up, then cosine to ``final``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine_schedule(step - warmup_steps, max(total_steps - warmup_steps, 1), peak, final)
