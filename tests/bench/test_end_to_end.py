"""One tiny timm ViT trained with SOPObjective on a fixed batch: the loss must go down."""

import copy

import torch

from sop_plugin.bench.train.ema import ema_update
from sop_plugin.bench.train.encoder import MaskedEncoder, build_vit
from sop_plugin.core import SOPConfig, SOPHead, SOPObjective
from sop_plugin.runtime.masking import BlockMaskGenerator


def test_sop_loss_decreases_on_fixed_batch() -> None:
    torch.manual_seed(0)
    student = torch.nn.ModuleDict(
        {"enc": MaskedEncoder(build_vit(16, 4, 48, 2, 4, in_chans=1)), "head": SOPHead(48, 128, 32)}
    )
    teacher = copy.deepcopy(student).requires_grad_(False)
    cfg = SOPConfig(
        dim=32,
        class_memory_size=256,
        patch_memory_size=256,
        class_num_sets=2,
        class_num_anchors=16,
        class_num_supports=4,
        patch_num_anchors=32,
        patch_num_supports=1,
    )
    obj = SOPObjective(cfg)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(16, 1, 16, 16, generator=gen)
    local = torch.nn.functional.interpolate(images[..., 2:14, 2:14], size=16)
    views = [images, images.flip(-1), local]
    masks = BlockMaskGenerator((4, 4), prob=1.0, ratio=(0.2, 0.4), min_block=4)(32, gen).view(2, 16, 16)
    # fill the memories with the teacher's own embeddings first (as after a warm-up)
    with torch.no_grad():
        for _ in range(16):
            tc, tp = zip(*[teacher["enc"](v) for v in views[:2]])
            obj.update_memories(teacher["head"](torch.stack(tc)), teacher["head"](tp[0][:, 0]))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        s_cls, s_patch = [], []
        for i, v in enumerate(views):
            c, p = student["enc"](v, masks[i] if i < 2 else None)
            s_cls.append(student["head"](c))
            if i < 2:
                s_patch.append(student["head"](p))
        with torch.no_grad():
            tc, tp = zip(*[teacher["enc"](v) for v in views[:2]])
            t_cls, t_patch = teacher["head"](torch.stack(tc)), teacher["head"](torch.stack(tp))
        out = obj(
            torch.stack(s_cls), t_cls, torch.stack(s_patch), t_patch, masks, step=0, update_memory=False
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ema_update(teacher, student, 0.9)
        losses.append(float(out.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
