"""One training run of SOPObjective + a tiny ViT on fixed data, on one rank of W (gloo) or alone.

Used by ``test_ddp_core.py`` through ``torch.multiprocessing.spawn``; imports only torch
and ``sop_plugin.core`` (+ the bench's masked ViT) so that the spawned processes start quickly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sop_plugin.bench.train.ema import ema_update
from sop_plugin.bench.train.encoder import MaskedEncoder, build_vit
from sop_plugin.core import SOPConfig, SOPHead, SOPObjective
from sop_plugin.runtime.masking import BlockMaskGenerator

GLOBAL_BATCH = 8
STEPS = 10
SOP = SOPConfig(
    dim=32,
    class_memory_size=64,
    patch_memory_size=64,
    class_num_sets=2,
    class_num_anchors=8,
    class_num_supports=2,
    patch_num_sets=2,
    patch_num_anchors=8,
    patch_num_supports=1,
    warmup_teacher_temp_steps=5,
    koleo_weight=0.0,
    seed=3,
)


class Student(nn.Module):
    """ViT + shared head; one forward per step (as DDP wants): globals masked, locals not."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = MaskedEncoder(build_vit(16, 4, 32, 1, 2, in_chans=1, drop_path_rate=0.0))
        self.head = SOPHead(32, 64, 32)

    def forward(
        self, globals_: Tensor, masks: Tensor | None, locals_: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        g, b = globals_.shape[:2]
        cls, patches = self.enc(globals_.flatten(0, 1), None if masks is None else masks.flatten(0, 1))
        z_cls = self.head(cls).view(g, b, -1)
        z_patch = self.head(patches).view(g, b, patches.shape[1], -1)
        if locals_ is not None:
            lc, _ = self.enc(locals_.flatten(0, 1))
            z_cls = torch.cat([z_cls, self.head(lc).view(locals_.shape[0], b, -1)])
        return z_cls, z_patch


def fixed_batch(step: int) -> tuple[Tensor, Tensor, Tensor]:
    """Global batch of step ``step``.

    2 global views [2, 8, 1, 16, 16], 1 local [1, 8, 1, 16, 16], masks [2, 8, 16].
    """
    gen = torch.Generator().manual_seed(1000 + step)
    images = torch.randn(GLOBAL_BATCH, 1, 16, 16, generator=gen)
    globals_ = torch.stack([images, images.flip(-1) + 0.1 * torch.randn(images.shape, generator=gen)])
    local = nn.functional.interpolate(images[..., 2:14, 2:14], size=16, mode="bilinear", align_corners=False)
    masks = BlockMaskGenerator((4, 4), prob=0.7, ratio=(0.2, 0.5), min_block=2)(2 * GLOBAL_BATCH, gen)
    return globals_, local[None], masks.view(2, GLOBAL_BATCH, 16)


def train(rank: int, world: int, out: Path, port: int) -> None:
    """Train STEPS steps on this rank's slice of every global batch; save what the test compares."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    student = Student()
    teacher = copy.deepcopy(student).requires_grad_(False)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    objective = SOPObjective(SOP)
    model: nn.Module = nn.parallel.DistributedDataParallel(student) if world > 1 else student
    # eps=1e-6: the attention key bias has an exactly-zero true gradient; Adam would turn its
    # ~1e-10 rounding noise (which differs with the batch split) into +-lr steps at eps=1e-8
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.04, eps=1e-6)
    b = GLOBAL_BATCH // world
    part = slice(rank * b, (rank + 1) * b)
    record: dict[str, list[Tensor]] = {
        "loss": [],
        "class_bank": [],
        "patch_bank": [],
        "class_ptr": [],
        "patch_ptr": [],
    }
    for step in range(STEPS):
        globals_, local, masks = fixed_batch(step)
        globals_, local, masks = globals_[:, part], local[:, part], masks[:, part]
        s_cls, s_patch = model(globals_, masks, local)
        with torch.no_grad():
            t_cls, t_patch = teacher(globals_, None, None)
        out_step = objective(s_cls, t_cls, s_patch, t_patch, masks, step=step)
        opt.zero_grad()
        out_step.loss.backward()
        opt.step()
        ema_update(teacher, student, 0.99)
        loss = out_step.loss.detach().clone()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        record["loss"].append(loss)
        for level in ("class", "patch"):
            memory = getattr(objective, f"{level}_memory")
            record[f"{level}_bank"].append(memory.bank.clone())
            record[f"{level}_ptr"].append(memory.ptr.clone())
    state = {"student": student.state_dict(), "teacher": teacher.state_dict()}
    torch.save({"record": record, "state": state, "init": init}, out / f"rank{rank}-of-{world}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
