"""Non-finite losses, host-independent: the error, the policies, a check every DDP rank agrees on,
and a snapshot of the objective's buffers so a skipped step leaves no trace in the memories."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: values of ``train.on_nonfinite`` (bench) and ``method_kwargs.on_nonfinite`` (solo-learn)
POLICIES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """Training stopped at a non-finite loss (policy ``stop``, or too many skips in a row)."""


def finite_on_all_ranks(loss: Tensor) -> bool:
    """True when ``loss`` is finite on every DDP rank (one all-reduce; ranks always agree)."""
    flag = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def nonfinite_buffers(module: nn.Module) -> list[str]:
    """Names of the buffers of ``module`` holding NaN/inf (memories, DINO/iBOT centres)."""
    return [name for name, buf in module.named_buffers() if buf.is_floating_point() and not torch.isfinite(buf).all()]


def snapshot_buffers(module: nn.Module) -> dict[str, Tensor]:
    """Copies of every buffer of ``module`` (memories and their pointers), to undo a skipped step."""
    return {name: buf.detach().clone() for name, buf in module.named_buffers()}


def restore_buffers(module: nn.Module, snapshot: dict[str, Tensor]) -> None:
    """Put the buffers of ``module`` back to ``snapshot``."""
    for name, buf in module.named_buffers():
        buf.copy_(snapshot[name])
