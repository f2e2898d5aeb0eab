"""Non-finite losses, the same for both hosts: stop with a diagnosis, or skip the step without a trace.

:class:`NonFiniteGuard` is the one stop/skip policy. A host calls, every step:

1. :meth:`~NonFiniteGuard.snapshot` before the objective runs (copies its buffers, ``skip`` only);
2. :meth:`~NonFiniteGuard.check` on the step's loss: every DDP rank agrees; a non-finite loss
   raises :class:`NonFiniteLossError` (``stop``, or too many skips in a row) or restores the
   buffers and counts the skip (``skip``);
3. :meth:`~NonFiniteGuard.drop_gradients` in ``on_before_optimizer_step``: a skipped step
   updates no parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from sop_plugin.core.distributed import rank_and_world

#: values of ``train.on_nonfinite`` (bench) and ``method_kwargs.on_nonfinite`` (solo-learn)
POLICIES = ("stop", "skip")
#: consecutive skipped steps after which ``skip`` gives up
DEFAULT_MAX_SKIPS = 10


class NonFiniteLossError(FloatingPointError):
    """Training stopped at a non-finite loss (policy ``stop``, or too many skips in a row)."""


def finite_on_all_ranks(loss: Tensor) -> bool:
    """True when ``loss`` is finite on every DDP rank (one all-reduce; ranks always agree)."""
    flag = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if rank_and_world()[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def nonfinite_buffers(module: nn.Module) -> list[str]:
    """Names of the buffers of ``module`` holding NaN/inf (memories, DINO/iBOT centres)."""
    buffers = module.named_buffers()
    return [name for name, buf in buffers if buf.is_floating_point() and not torch.isfinite(buf).all()]


class NonFiniteGuard:
    """The stop/skip policy for non-finite losses.

    Args:
        policy: ``stop`` (raise, naming the culprit) or ``skip`` (drop the step).
        max_consecutive_skips: with ``skip``, give up after this many skipped steps in a row.
        settings: prefix of the host's setting names in messages (``train.``, ``method_kwargs.``).
        name: the loss, as messages call it (``sop``, ``SOP``, ``dino``, ...).
    """

    def __init__(
        self,
        policy: str = "stop",
        max_consecutive_skips: int = DEFAULT_MAX_SKIPS,
        settings: str = "train.",
        name: str = "sop",
    ) -> None:
        problems = self.problems(policy, max_consecutive_skips, settings)
        if problems:
            raise ValueError("; ".join(problems))
        self.policy, self.max_consecutive_skips = policy, int(max_consecutive_skips)
        self.settings, self.name = settings, name
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.skip = False  # the current step was skipped
        self._module: nn.Module | None = None
        self._buffers: dict[str, Tensor] = {}

    @staticmethod
    def problems(policy: Any, max_consecutive_skips: Any, settings: str = "train.") -> list[str]:
        """What is wrong with these settings (empty when they work), one message each."""
        errors = []
        if policy not in POLICIES:
            errors.append(f"{settings}on_nonfinite={policy!r}; choose one of {list(POLICIES)}")
        if int(max_consecutive_skips) < 1:
            errors.append(f"{settings}max_consecutive_skips={max_consecutive_skips} must be >= 1")
        return errors

    def snapshot(self, module: nn.Module) -> None:
        """Before the step: copy the buffers of ``module`` (memories and pointers) to undo a skip."""
        self._module = module
        if self.policy == "skip":
            self._buffers = {name: b.detach().clone() for name, b in module.named_buffers()}

    def check(self, loss: Tensor, step: int, explain: Callable[[], str], hint: Callable[[], str]) -> bool:
        """True when ``loss`` is finite on every rank; else raise (``stop``) or undo the step (``skip``).

        Only called on a non-finite loss: ``explain()`` says what is non-finite on this rank,
        ``hint()`` where to resume from.
        """
        self.skip = not finite_on_all_ranks(loss)
        if not self.skip:
            self.consecutive_skips = 0
            return True
        if bool(torch.isfinite(loss.detach()).all()):  # another rank saw it; its message names it
            what = (
                f"on another DDP rank (this rank {rank_and_world()[0]}: loss "
                f"{float(loss.detach()):.4g}; see the other rank's message)"
            )
        else:
            what = explain()
        where = f"non-finite {self.name} loss at step {step}: {what}; {hint()}"
        if self.policy != "skip":
            raise NonFiniteLossError(
                f"{where}. Fix the cause or set {self.settings}on_nonfinite=skip to skip such steps"
            )
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteLossError(
                f"{where}. {self.consecutive_skips} consecutive steps were already skipped "
                f"({self.settings}max_consecutive_skips): training is not recovering"
            )
        if self._module is None:
            raise RuntimeError("NonFiniteGuard.snapshot(module) must run before check()")
        for buf_name, buf in self._module.named_buffers():
            buf.copy_(self._buffers[buf_name])
        self.skipped_steps += 1
        self.consecutive_skips += 1
        skipped = f"skipped step {step} ({self.skipped_steps} skipped so far)"
        rank_zero_warn(f"{self.settings}on_nonfinite=skip: {skipped}: {where}")
        return False

    def drop_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """In ``on_before_optimizer_step``: a skipped step leaves every parameter as it was."""
        if self.skip:  # AdamW leaves parameters without gradients untouched
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
