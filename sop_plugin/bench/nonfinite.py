"""Non-finite losses in the benchmark: a message that names the culprit and where to resume from."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from sop_plugin.core import SOPObjective
from sop_plugin.runtime import explain_nonfinite
from sop_plugin.runtime.nonfinite import nonfinite_buffers


def describe(objective: nn.Module, logs: dict[str, Any], loss: Tensor) -> str:
    """What is non-finite: SOP's own explanation (loss per SOP set, inputs, memories), else the logged parts."""
    inner = getattr(objective, "objective", None)
    if isinstance(inner, SOPObjective):
        return explain_nonfinite(inner)
    parts = [f"total loss {float(loss.detach()):.4g}"]
    for key in ("loss_cls", "loss_mim"):
        if key in logs:
            name = "class loss" if key == "loss_cls" else "patch loss"
            value = float(logs[key])
            parts.append(f"{name} {value:.4g}{' (non-finite)' if not math.isfinite(value) else ''}")
    if "teacher_temp" in logs:
        parts.append(f"teacher temperature {float(logs['teacher_temp']):g}")
    bad = nonfinite_buffers(objective)
    parts.append("non-finite buffers: " + (", ".join(bad) if bad else "none"))
    return "; ".join(parts)


def checkpoint_hint(path: str | None, step: int | None) -> str:
    """Where to resume from, for the error message."""
    if path:
        where = f" (step {step})" if step is not None else ""
        return f"last good checkpoint: {path}{where}; resume with resume={path} after the fix"
    return "no checkpoint written yet (set train.checkpoint_every_n_steps to keep one)"
