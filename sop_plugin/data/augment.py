"""Fast batched multi-crop augmentation on uint8 image tensors.

Per-image PIL pipelines dominate CPU training time on small images; here a
whole batch is augmented with a handful of tensor calls per view: one
``affine_grid``/``grid_sample`` for random-resized-crop + flip, vectorised
colour jitter, and grouped convolutions for the Gaussian blur.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops

# (first global view, second global view, every local view), as in DINO.
ViewProbs = tuple[float, float, float]


def _channel_constants(values: Sequence[float], channels: int, device: torch.device) -> Tensor:
    tensor = torch.as_tensor(tuple(values), dtype=torch.float32, device=device)
    if tensor.numel() == 1:
        return tensor.expand(channels)
    if tensor.numel() != channels:
        raise ValueError(f"{tensor.numel()} normalisation constants for {channels} channels")
    return tensor


def _check_probs(name: str, probs: Sequence[float]) -> ViewProbs:
    if len(probs) != 3 or not all(0.0 <= p <= 1.0 for p in probs):
        raise ValueError(f"{name} must be 3 probabilities (global 1, global 2, local), got {probs}")
    return (float(probs[0]), float(probs[1]), float(probs[2]))


class MultiCropAugment:
    """2 global + ``num_local`` local views of a uint8 batch, normalised float32.

    Each view: random resized crop (area ~ ``global_scale``/``local_scale``,
    aspect in ``ratio``) with horizontal flip (``hflip``), colour jitter with
    probability ``jitter_prob`` (``brightness``, ``contrast``, ``saturation``
    strengths), random greyscale (RGB only), Gaussian blur and solarisation
    with per-view probabilities (``blur_prob``/``solarize_prob``: first
    global, second global, locals; sigma ~ U(``blur_sigma``) in output
    pixels), then normalisation by ``mean``/``std`` (one value broadcasts over
    channels).

    When even the largest crop of a view is larger than the output, the batch
    is first downscaled once with antialiasing, so crops never alias.
    The same generator state and input give the same views.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        num_local: int,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.1, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_prob: Sequence[float] = (1.0, 0.1, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_prob: Sequence[float] = (0.0, 0.2, 0.0),
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
    ) -> None:
        if global_size < 1 or local_size < 1 or num_local < 0:
            raise ValueError("sizes must be positive and num_local >= 0")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        self.global_size, self.local_size, self.num_local = global_size, local_size, num_local
        self.global_scale, self.local_scale, self.ratio = global_scale, local_scale, ratio
        self.hflip, self.jitter_prob, self.grayscale_prob = hflip, jitter_prob, grayscale_prob
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.blur_prob = _check_probs("blur_prob", blur_prob)
        self.solarize_prob = _check_probs("solarize_prob", solarize_prob)
        self.blur_sigma = blur_sigma
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def num_views(self) -> int:
        """2 global + ``num_local`` local views."""
        return 2 + self.num_local

    def __call__(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """Augment ``images`` (uint8 ``[B, C, H, W]``): ``[global_1, global_2, local_1, ...]``."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [B,C,H,W], got {images.dtype} {tuple(images.shape)}")
        pixels = images.to(torch.float32).div_(255.0)
        channels, device = images.shape[1], images.device
        mean = _channel_constants(self.mean, channels, device)
        std = _channel_constants(self.std, channels, device)
        global_src = self._source(pixels, self.global_size, self.global_scale)
        local_src = self._source(pixels, self.local_size, self.local_scale) if self.num_local else None
        views = [self._view(global_src, self.global_size, self.global_scale, s, generator) for s in (0, 1)]
        local = range(self.num_local)
        views += [self._view(local_src, self.local_size, self.local_scale, 2, generator) for _ in local]
        return [ops.normalize(v, mean, std) for v in views]

    @staticmethod
    def _source(pixels: Tensor, size: int, scale: tuple[float, float]) -> Tensor:
        """``pixels`` downscaled (antialiased) so that the largest crop maps about 1:1 to ``size``."""
        h, w = pixels.shape[-2:]
        factor = size / (min(h, w) * scale[1] ** 0.5)
        if factor >= 1.0:
            return pixels
        new_size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return F.interpolate(pixels, size=new_size, mode="bilinear", antialias=True, align_corners=False)

    def _view(
        self, source: Tensor, size: int, scale: tuple[float, float], slot: int, generator: torch.Generator
    ) -> Tensor:
        n, device = source.shape[0], source.device
        aspect = source.shape[-1] / source.shape[-2]
        boxes = ops.sample_crop_boxes(n, scale, self.ratio, aspect, generator, device)
        flips = ops.bernoulli(n, self.hflip, generator, device)
        view = ops.crop_resize(source, boxes, flips, size)
        jitter = (self.brightness, self.contrast, self.saturation, self.jitter_prob)
        view = ops.color_jitter(view, *jitter, generator)
        view = ops.random_grayscale(view, self.grayscale_prob, generator)
        view = ops.random_blur(view, self.blur_prob[slot], self.blur_sigma, generator)
        return ops.random_solarize(view, self.solarize_prob[slot], generator)


class EvalTransform:
    """Deterministic evaluation transform: resize (short side + centre crop) to ``size`` and normalise.

    ``size=None`` keeps the native resolution.
    """

    def __init__(self, size: int | None, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 ``[B, C, size, size]``, normalised."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [B,C,H,W], got {images.dtype} {tuple(images.shape)}")
        pixels = images.to(torch.float32).div_(255.0)
        if self.size is not None:
            pixels = ops.resize_short_side_crop(pixels, self.size)
        channels, device = images.shape[1], images.device
        mean = _channel_constants(self.mean, channels, device)
        std = _channel_constants(self.std, channels, device)
        return ops.normalize(pixels, mean, std)
