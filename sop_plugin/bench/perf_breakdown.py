"""Where SOP's training step goes: wall-clock timers attached to a SOP ``BenchModule``.

Forward hooks time the backbone and the head, a proxy times the retrieval backend,
wrappers time SOP-set construction, assignment, losses and the memory update, and
Lightning callback hooks time backward and what follows it (AdamW, LR schedule, EMA). Nothing in ``core`` knows about it. On
CUDA every boundary synchronises, so attach it only to steps that are not themselves
timed for the step-time comparison.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

import sop_plugin.core.objective as sop_objective_module
from sop_plugin.core.retrieval import Retrieval, search_sets

#: categories reported, in plotting order; "other" is the step minus all of them
CATEGORIES = ("augment_masks", "backbone", "head", "retrieval", "sop_sets", "assignment", "loss",
              "memory_update", "objective_other", "backward", "optimizer_ema", "other")


class PhaseTimer:
    """Accumulates wall seconds per label; nested labels are subtracted by :func:`split_step`."""

    def __init__(self, device: torch.device) -> None:
        self.sync = device.type == "cuda"
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.totals[label] += self.now() - start

    def wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(label):
                return fn(*args, **kwargs)

        return timed

    def hook(self, module: nn.Module, label: str) -> list[Any]:
        """Time every forward of ``module`` under ``label``; returns the hook handles."""
        starts: list[float] = []

        def pre(*_: Any) -> None:
            starts.append(self.now())

        def post(*_: Any) -> None:
            self.totals[label] += self.now() - starts.pop()

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def pop(self) -> dict[str, float]:
        """This step's totals, then start afresh."""
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


class TimedRetrieval:
    """A retrieval backend that reports its search time to a :class:`PhaseTimer`."""

    def __init__(self, inner: Retrieval, timer: PhaseTimer) -> None:
        self.inner, self.timer, self.name = inner, timer, inner.name

    def search(self, queries: Tensor, pool: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with self.timer.phase("retrieval"):
            return self.inner.search(queries, pool, k, exclude)

    def search_sets(self, queries: Tensor, pool: Tensor, k: int,
                    exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with self.timer.phase("retrieval"):
            return search_sets(self.inner, queries, pool, k, exclude)


def _set_attr(stack: ExitStack, owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name`` until ``stack`` closes (then restore it, or delete an instance override)."""
    if name in vars(owner):
        stack.callback(setattr, owner, name, vars(owner)[name])
    else:
        stack.callback(delattr, owner, name)
    setattr(owner, name, value)


def attach(module: Any, timer: PhaseTimer) -> ExitStack:
    """Instrument a SOP ``BenchModule``; close the returned stack to remove every timer."""
    stack = ExitStack()
    bench = module.objective  # SOPBench
    sop = bench.objective  # SOPObjective
    hooked = ((module.student, "backbone"), (module.teacher, "backbone"), (bench.student_head, "head"),
              (bench.teacher_head, "head"), (bench, "objective_total"))
    for mod, label in hooked:
        for handle in timer.hook(mod, label):
            stack.callback(handle.remove)
    wrapped = ((module, "augment", "augment_masks"), (module, "mask_gen", "augment_masks"),
               (bench, "observe_batch", "observe_batch"), (sop, "update_memories", "update_memories"),
               (sop, "build_sets", "sop_sets_total"), (sop_objective_module, "assign_sets", "assignment"),
               (sop_objective_module, "sop_global_loss", "loss"), (sop_objective_module, "sop_mim_loss", "loss"))
    for owner, name, label in wrapped:
        _set_attr(stack, owner, name, timer.wrap(getattr(owner, name), label))
    _set_attr(stack, sop, "retrieval", TimedRetrieval(sop.retrieval, timer))
    return stack


def split_step(raw: dict[str, float], step_s: float) -> dict[str, float]:
    """Disjoint categories (:data:`CATEGORIES`, seconds) from one step's raw, partly nested totals."""
    def get(label: str) -> float:
        return raw.get(label, 0.0)

    out = {c: get(c) for c in ("augment_masks", "backbone", "head", "retrieval", "assignment", "loss",
                               "backward", "optimizer_ema")}
    out["sop_sets"] = max(0.0, get("sop_sets_total") - get("retrieval"))
    out["memory_update"] = get("update_memories") + get("observe_batch")
    inside = get("head") + get("sop_sets_total") + get("assignment") + get("loss") + get("update_memories")
    out["objective_other"] = max(0.0, get("objective_total") - inside)
    out["other"] = max(0.0, step_s - sum(out.values()))
    return {c: out[c] for c in CATEGORIES}
