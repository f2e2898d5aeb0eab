"""Fine-tuning: the whole pretrained backbone plus a linear head, supervised, with layer-wise lr decay.

The recipe follows the BEiT/iBOT/SOP fine-tuning protocol at the scale of the benchmark:
AdamW, a linear warm-up then a cosine decay per step, label smoothing, and layer-wise
learning-rate decay: the head and the last norm train at ``lr``, block ``i`` (0-based) of
``L`` at ``lr * layer_decay ** (L - i)`` and the patch embedding / [CLS] token at
``lr * layer_decay ** (L + 1)``. Mixup, CutMix, RandAugment
and drop-path are left out: with one or two epochs on 28-pixel images they cost time and
change nothing the comparison needs; every method and the random-init control get the
identical recipe. Parameters frozen in pre-training stay frozen (the benchmark ViT's fixed
sin-cos position embedding).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sop_plugin.bench.evals._common import progress, settings_from, stream_seed
from sop_plugin.bench.train.encoder import MaskedEncoder
from sop_plugin.data import ops
from sop_plugin.data.augment import EvalTransform

#: backbone parameters that stay as pre-training left them (fixed sin-cos position embedding)
FROZEN = ("pos_embed",)


@dataclass(frozen=True)
class FinetuneSettings:
    """``eval.finetune``.

    ``train_images``: the first N of a seeded shuffle of the training set (None: all).
    """

    train_images: int | None = 10000
    epochs: int = 2
    batch_size: int = 128
    lr: float = 5e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.8, 1.0)
    hflip: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("eval.finetune.epochs and batch_size must be >= 1")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"eval.finetune.layer_decay={self.layer_decay} must be in (0, 1]")
        if self.lr <= 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("eval.finetune.lr must be > 0 and warmup_fraction in [0, 1)")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"eval.finetune.crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")
        if self.train_images is not None and self.train_images < 1:
            raise ValueError("eval.finetune.train_images must be >= 1 or null (all)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> FinetuneSettings:
        values = dict(values or {})
        if values.get("train_images") is not None:
            values["train_images"] = int(values["train_images"])
        return settings_from(cls, values, "eval.finetune")


class Classifier(nn.Module):
    """A backbone's [CLS] token through a linear head (zero-initialised: no random draw)."""

    def __init__(self, encoder: MaskedEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images)[0])


def layer_id(name: str, depth: int) -> int:
    """The layer of a ViT parameter for lr decay.

    Embeddings 0, block ``i`` is ``i + 1``, the rest ``depth + 1``.
    """
    if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(
    model: Classifier, lr: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay (the BEiT / iBOT / SOP convention).

    Parameter of layer ``l`` (:func:`layer_id`) trains at ``lr * layer_decay ** (depth + 1 - l)``:
    the head and the final norm at ``lr``, the last block at ``lr * layer_decay``, the patch
    embedding and [CLS] token at ``lr * layer_decay ** (depth + 1)``. 1-D parameters (norms,
    biases, tokens) get no weight decay. Only parameters with ``requires_grad`` enter.
    (timm's ``param_groups_layer_decay`` puts the last block at the head's rate, one step
    off this convention, hence the own grouping.)
    """
    vit = model.encoder.masked_vit.vit
    depth = len(vit.blocks)
    named = [(n, p) for n, p in vit.named_parameters()] + [
        (f"head.{n}", p) for n, p in model.head.named_parameters()
    ]
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        layer = depth + 1 if name.startswith("head.") else layer_id(name, depth)
        decay = param.ndim > 1
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
                "lr": lr * scale,
            },
        )
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def _prepare(encoder: MaskedEncoder) -> MaskedEncoder:
    """A trainable copy of ``encoder`` (the teacher is frozen): every ViT parameter but :data:`FROZEN`."""
    enc = copy.deepcopy(encoder).cpu()
    enc.requires_grad_(False)
    for name, p in enc.masked_vit.vit.named_parameters():
        p.requires_grad_(name not in FROZEN)
    return enc


def finetune_top1(
    encoder: MaskedEncoder,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    img_size: int,
    settings: FinetuneSettings,
    seed: int,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
    desc: str = "finetune",
) -> float:
    """Test top-1 (percent) after fine-tuning a copy of ``encoder`` (the encoder itself is untouched).

    Training images get a random resized crop (``crop_scale``, output ``img_size``) and a
    horizontal flip, drawn from a generator seeded by ``seed`` like the batch order; the test
    images the benchmark's evaluation transform. Given the seed, the run is deterministic on
    one device.
    """
    device = torch.device(device)
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    gen = torch.Generator().manual_seed(stream_seed(seed, "finetune"))
    order = torch.randperm(train_images.shape[0], generator=gen)
    if settings.train_images is not None:
        order = order[: settings.train_images]
    images, labels = train_images[order], train_labels[order].long()
    labelled = labels >= 0
    images, labels = images[labelled], labels[labelled]
    n = images.shape[0]
    if n == 0:
        raise ValueError("fine-tuning needs labelled training images")

    model = Classifier(_prepare(encoder), num_classes).to(device).train()
    groups = layer_decay_groups(model, settings.lr, settings.weight_decay, settings.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = int(settings.warmup_fraction * total)
    final = settings.min_lr / settings.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    channels = images.shape[1]
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32, device=device).expand(channels).contiguous()
    std_t = torch.tensor(tuple(std), dtype=torch.float32, device=device).expand(channels).contiguous()
    aspect = images.shape[-1] / images.shape[-2]
    with torch.enable_grad():
        for step in progress(range(total), desc=desc):
            if step % steps_per_epoch == 0:
                perm = torch.randperm(n, generator=gen)
            idx = perm[(step % steps_per_epoch) * settings.batch_size :][: settings.batch_size]
            x = images[idx].to(device).float().div_(255.0)
            boxes = ops.sample_crop_boxes(
                idx.numel(), settings.crop_scale, (3 / 4, 4 / 3), aspect, gen, device
            )
            flips = ops.bernoulli(idx.numel(), settings.hflip, gen, device)
            x = ops.normalize(ops.crop_resize(x, boxes, flips, img_size), mean_t, std_t)
            loss = F.cross_entropy(model(x), labels[idx].to(device), label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return _accuracy(model.eval(), test_images, test_labels, EvalTransform(img_size, mean, std), device)


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    transform: EvalTransform,
    device: torch.device,
    batch_size: int = 1024,
) -> float:
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = transform(images[start : start + batch_size].to(device))
        correct += int((model(x).argmax(dim=1).cpu() == labels[start : start + batch_size]).sum())
    return 100.0 * correct / images.shape[0]
