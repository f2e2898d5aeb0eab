"""Per-parameter gradient-norm clipping, the DINO/iBOT/SOP authors' ``clip_gradients``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def clip_per_parameter(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient to an L2 norm of at most ``max_norm`` (0: no clipping).

    Each parameter is clipped on its own (not the global norm), as the authors' code does.
    """
    if max_norm <= 0:
        return
    for param in params:
        if param.grad is not None:
            torch.nn.utils.clip_grad_norm_(param, max_norm)
