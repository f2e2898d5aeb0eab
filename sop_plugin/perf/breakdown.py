"""Where SOP's training step goes: a :class:`~sop_plugin.perf.timing.Stopwatch` on a SOP ``BenchModule``.

The timer rides on public hooks only: forward hooks time the backbones, the heads and the
whole SOP objective module; the objective's own ``timer`` hook times its phases (SOP sets,
retrieval inside them, assignment, losses, memory update); the bench module's ``timer`` hook
times augmentation and masks; :class:`~sop_plugin.perf.step.PerfCallback` times backward and
what follows it (AdamW, LR schedule, EMA) from Lightning's callback hooks. On CUDA every
boundary synchronises, so attach it only to steps that are not themselves timed for the
step-time comparison.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from sop_plugin.perf.timing import Stopwatch

#: categories reported, in plotting order; "other" is the step minus all of them
CATEGORIES = (
    "augment_masks",
    "backbone",
    "head",
    "retrieval",
    "sop_sets",
    "assignment",
    "loss",
    "memory_update",
    "objective_other",
    "backward",
    "optimizer_ema",
    "other",
)

#: the phases the objective times itself (``SOPObjective.timer``); "retrieval" nests in "sop_sets"
OBJECTIVE_PHASES = ("sop_sets", "assignment", "loss", "memory_update")


def _use_timer(stack: ExitStack, owner: Any, timer: Stopwatch) -> None:
    """Set ``owner.timer`` until ``stack`` closes, then put the previous one back."""
    stack.callback(setattr, owner, "timer", owner.timer)
    owner.timer = timer


def attach(module: Any, timer: Stopwatch) -> ExitStack:
    """Time a SOP ``BenchModule`` with ``timer``; close the returned stack to detach it."""
    stack = ExitStack()
    bench = module.objective  # SOPBench: the heads and the SOP objective
    hooked = (
        (module.student, "backbone"),
        (module.teacher, "backbone"),
        (bench.student_head, "head"),
        (bench.teacher_head, "head"),
        (bench, "objective_total"),
    )
    for mod, label in hooked:
        for handle in timer.hook(mod, label):
            stack.callback(handle.remove)
    _use_timer(stack, module, timer)  # "augment_masks"
    _use_timer(stack, bench.objective, timer)  # OBJECTIVE_PHASES and "retrieval"
    return stack


def split_step(raw: dict[str, float], step_s: float) -> dict[str, float]:
    """Disjoint categories (:data:`CATEGORIES`, seconds) from one step's raw, partly nested totals."""

    def get(label: str) -> float:
        return raw.get(label, 0.0)

    out = {c: get(c) for c in CATEGORIES if c not in ("sop_sets", "objective_other", "other")}
    out["sop_sets"] = max(0.0, get("sop_sets") - get("retrieval"))
    inside = get("head") + sum(get(p) for p in OBJECTIVE_PHASES)
    out["objective_other"] = max(0.0, get("objective_total") - inside)
    out["other"] = max(0.0, step_s - sum(out.values()))
    return {c: out[c] for c in CATEGORIES}
