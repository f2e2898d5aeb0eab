"""Dense prediction on patch tokens: a linear (1x1) segmentation probe on the frozen backbone.

The sets come from :mod:`sop_plugin.bench.evals.seg_data`. The backbone sees the whole canvas
at its native patch size; timm resamples the position embedding to the larger grid
(``dynamic_img_size``). The probe is a 1x1 convolution on the standardised patch tokens whose
logits are bilinearly upsampled to pixels (a linear map commutes with the upsampling, so this
equals a linear probe on upsampled tokens, without holding D channels per pixel), trained with
cross-entropy over pixels. Scores: mIoU over the classes present in the held-out ground truth
or predictions, and pixel accuracy. Controls: the same probe on a random-init backbone and on
raw pixels (each patch's pixels as its token).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sop_plugin.bench.evals._common import progress, stream_seed
from sop_plugin.bench.evals.probes import extract_features
from sop_plugin.bench.evals.seg_data import IGNORE, SegSettings
from sop_plugin.bench.train.encoder import MaskedEncoder
from sop_plugin.data.augment import EvalTransform

log = logging.getLogger("sop_bench")


def vit_patch_tokens(
    encoder: MaskedEncoder,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    patch_size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Patch tokens ``[N, D, H/p, W/p]`` (float32, CPU) of uint8 images at their native size."""
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size or h != w:
        raise ValueError(
            f"segmentation images must be square and divisible by the patch size {patch_size}, "
            f"got {h}x{w}: set eval.seg.image_size"
        )
    was_training = encoder.training
    encoder.eval()
    flat = extract_features(
        lambda x: encoder(x)[1], images, EvalTransform(None, mean, std), batch_size, device
    )
    encoder.train(was_training)
    gh, gw = h // patch_size, w // patch_size
    return flat.view(images.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()


def pixel_patch_tokens(images: Tensor, patch_size: int) -> Tensor:
    """The raw-pixel control: each patch's pixels in [0, 1] as its token, ``[N, C*p*p, H/p, W/p]``."""
    return F.pixel_unshuffle(images.float().div(255.0), patch_size)


# ---------------------------------------------------------------------------------------------- probe
def seg_probe(
    train_tokens: Tensor,
    train_masks: Tensor,
    test_tokens: Tensor,
    test_masks: Tensor,
    num_classes: int,
    settings: SegSettings,
    seed: int,
    class_names: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    desc: str = "seg probe",
) -> dict[str, Any]:
    """Train the 1x1 probe on ``train_tokens`` ``[N, D, h, w]`` -> pixel labels ``[N, H, W]``; score held-out.

    Returns ``{"miou", "pixel_acc"}`` (percent) and ``"iou"`` (class name -> percent, the
    classes that count). The probe is zero-initialised, trained with AdamW and a per-step
    cosine decay; the only randomness is the batch order (seeded).
    """
    device = torch.device(device)
    d = train_tokens.shape[1]
    mean = train_tokens.mean(dim=(0, 2, 3), keepdim=True)
    std = train_tokens.std(dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    probe = torch.nn.Conv2d(d, num_classes, kernel_size=1).to(device)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    n = train_tokens.shape[0]
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total))
    )
    gen = torch.Generator().manual_seed(stream_seed(seed, "seg_probe"))
    size = tuple(train_masks.shape[-2:])

    def logits(tokens: Tensor, out_size: tuple[int, ...]) -> Tensor:
        x = (tokens.to(device) - mean.to(device)) / std.to(device)
        return F.interpolate(probe(x), size=out_size, mode="bilinear", align_corners=False)

    with torch.enable_grad():
        for step in progress(range(total), desc=desc):
            if step % steps_per_epoch == 0:
                order = torch.randperm(n, generator=gen)
            idx = order[(step % steps_per_epoch) * settings.batch_size :][: settings.batch_size]
            target = train_masks[idx].to(device).long()
            loss = F.cross_entropy(logits(train_tokens[idx], size), target, ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, test_tokens.shape[0], 256):
            target = test_masks[start : start + 256].long()
            pred = logits(test_tokens[start : start + 256], tuple(target.shape[-2:])).argmax(dim=1).cpu()
            valid = target != IGNORE
            confusion += torch.bincount(
                target[valid] * num_classes + pred[valid], minlength=num_classes**2
            ).view(num_classes, num_classes)
    return segmentation_scores(confusion, class_names)


def segmentation_scores(confusion: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU and pixel accuracy (percent) from a ``[K, K]`` confusion matrix.

    The matrix's rows are the truth, its columns the prediction.
    A class's IoU is TP / (TP + FP + FN); classes with TP + FP + FN = 0 (absent from both the
    truth and the predictions) are left out of the mean.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    total = confusion.sum()
    names = list(class_names) if class_names is not None else [str(k) for k in range(confusion.shape[0])]
    return {
        "miou": 100.0 * float(iou[present].mean()) if bool(present.any()) else float("nan"),
        "pixel_acc": 100.0 * float(tp.sum() / total) if total > 0 else float("nan"),
        "iou": {names[k]: 100.0 * float(iou[k]) for k in range(len(names)) if bool(present[k])},
    }
