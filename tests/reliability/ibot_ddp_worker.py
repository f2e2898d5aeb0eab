"""Steps of the benchmark's iBOT objective on one of 2 gloo ranks, where rank 1 never has a masked patch.

Used by ``test_ibot_ddp.py`` through ``torch.multiprocessing``; imports torch and the objective
only (no bench module, no data), so the spawned processes start quickly. The backbone is left out:
the student's tokens are leaf tensors, so their gradients show what the loss sends back into a backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

EMBED = 16
G, B, N = 2, 3, 16  # global views, images per rank, patches (4 x 4)
STEPS = 2
#: collectives that do not complete within this raise on the rank (a hang would otherwise last forever)
COLLECTIVE_TIMEOUT_S = 60
#: iBOT's settings (field names of ``IBOTConfig``), shrunk; KoLeo off (computed per rank)
CFG: dict[str, Any] = {
    "head_hidden_dim": 32,
    "dim": 16,
    "num_prototypes": 32,
    "student_temp": 0.1,
    "warmup_teacher_temp": 0.04,
    "teacher_temp": 0.07,
    "warmup_teacher_temp_steps": 2,
    "center_momentum": 0.9,
    "mim_weight": 1.0,
    "koleo_weight": 0.0,
}


class RankTokens(NamedTuple):
    """Backbone outputs of one step: student [CLS] [G, B, D] and patches [G, B, N, D] (leaves with
    gradients), teacher [CLS] and patches, the student's masks [G, B, N]."""

    s_cls: Tensor
    s_patch: Tensor
    t_cls: Tensor
    t_patch: Tensor
    masks: Tensor


class Step(NamedTuple):
    """What one call of the objective gives the test: loss, its patch (MIM) term, the teacher's
    patch logits of the masked tokens [M, K], the patch centre [1, K] before and after the call."""

    loss: Tensor
    loss_mim: float
    teacher_masked: Tensor
    centre_before: Tensor
    centre_after: Tensor


def ibot_objective() -> tuple[nn.Module, Callable[[nn.Module, RankTokens, int], Step]]:
    """iBOT built as the bench builds it, and a call of its forward: the one place that knows
    the objective's API (``sop_plugin.methods``), to adapt when it changes.

    Returns the objective and ``run(model, tokens, step)``, which calls ``model`` (the objective
    or its DDP wrapper) on ``tokens``.
    """
    from sop_plugin.methods import Tokens as MethodTokens
    from sop_plugin.methods import build_method, method_config, method_masks

    objective = build_method("ibot", EMBED, method_config("ibot", CFG), method_masks("ibot"))

    def run(model: nn.Module, t: RankTokens, step: int) -> Step:
        centre = objective.patch_loss.center.value.clone()
        out = model(MethodTokens(t.s_cls, t.t_cls, t.s_patch, t.t_patch, t.masks), step)
        with torch.no_grad():
            teacher_masked = objective.teacher_head(t.t_patch[t.masks])
        return Step(
            out.loss,
            float(out.logs["loss_mim"]),
            teacher_masked,
            centre,
            objective.patch_loss.center.value.clone(),
        )

    return objective, run


def rank_tokens(rank: int, step: int) -> RankTokens:
    """Fixed tokens of ``rank`` at ``step``; rank 0 masks about 40 % of its patches, rank 1 none."""
    gen = torch.Generator().manual_seed(100 * rank + step)
    s_cls, t_cls = torch.randn(2, G, B, EMBED, generator=gen)
    s_patch, t_patch = torch.randn(2, G, B, N, EMBED, generator=gen)
    masks = torch.rand(G, B, N, generator=gen) < 0.4 if rank == 0 else torch.zeros(G, B, N, dtype=torch.bool)
    return RankTokens(s_cls.requires_grad_(), s_patch.requires_grad_(), t_cls, t_patch, masks)


def train(rank: int, world: int, out: Path, port: int) -> None:
    """STEPS steps (forward, backward through DDP, SGD) on this rank's tokens; save what the test checks."""
    torch.set_num_threads(1)
    timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timeout
    )
    torch.manual_seed(0)  # the same heads on both ranks
    objective, run = ibot_objective()
    # broadcast_buffers=False: each rank keeps the centre it computed itself (the test compares them)
    model = nn.parallel.DistributedDataParallel(objective, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.1)
    record: list[dict[str, Any]] = []
    for step in range(STEPS):
        tokens = rank_tokens(rank, step)
        result = run(model, tokens, step)
        opt.zero_grad()
        result.loss.backward()
        head_grad = torch.cat([p.grad.flatten() for p in objective.parameters() if p.grad is not None])
        patch_grad = (
            tokens.s_patch.grad if tokens.s_patch.grad is not None else torch.zeros_like(tokens.s_patch)
        )
        # head_grad: averaged over the ranks by DDP; patch_grad: this rank's own, and the patch term's
        # alone (the student's patch tokens enter no other term)
        record.append(
            {
                **result._asdict(),
                "loss": result.loss.detach(),
                "masks": tokens.masks,
                "s_patch_grad": patch_grad,
                "head_grad": head_grad,
            }
        )
        opt.step()
    torch.save(record, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
