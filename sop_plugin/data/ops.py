"""Batched image operations on float tensors ``[B, C, H, W]`` in [0, 1].

Each operation treats the whole batch in a few tensor calls, with one random
draw per image from an explicit ``Generator`` (draws happen on the
generator's device and are then moved to the images, so results do not
depend on where the images live).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

_LUMA = (0.299, 0.587, 0.114)


def uniform(n: int, low: float, high: float, generator: Generator, device: torch.device) -> Tensor:
    """``n`` draws from U(low, high) on ``device``."""
    draws = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float32)
    return (low + (high - low) * draws).to(device)


def bernoulli(n: int, prob: float, generator: Generator, device: torch.device) -> Tensor:
    """``n`` booleans, each True with probability ``prob``."""
    return uniform(n, 0.0, 1.0, generator, device) < prob


def sample_crop_boxes(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    aspect: float,
    generator: Generator,
    device: torch.device,
) -> Tensor:
    """Random-resized-crop boxes ``[n, 4]`` = (centre x, centre y, width, height) as fractions of the
    image side.

    Area fraction ~ U(scale), aspect ratio (in pixels) log-uniform in
    ``ratio``; ``aspect`` is the image's width/height. Boxes that would not fit
    are shrunk to the image side instead of being redrawn, which keeps the
    sampling one vectorised step.
    """
    area = uniform(n, scale[0], scale[1], generator, device)
    log_r = uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    r = torch.exp(log_r)
    width = torch.sqrt(area * r / aspect).clamp(max=1.0)
    height = torch.sqrt(area / r * aspect).clamp(max=1.0)
    cx = width / 2 + uniform(n, 0.0, 1.0, generator, device) * (1 - width)
    cy = height / 2 + uniform(n, 0.0, 1.0, generator, device) * (1 - height)
    return torch.stack([cx, cy, width, height], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, flips: Tensor, size: int) -> Tensor:
    """Cut ``boxes`` out of ``images``, mirror where ``flips``, resample to ``size`` x ``size``
    (bilinear, one call)."""
    n = images.shape[0]
    cx, cy, width, height = boxes.to(images.dtype).unbind(dim=1)
    sign = 1.0 - 2.0 * flips.to(images.dtype)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grey(images: Tensor) -> Tensor:
    """Luma ``[B, 1, H, W]`` (the image itself when it has one channel)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def color_jitter(
    images: Tensor, brightness: float, contrast: float, saturation: float, prob: float, generator: Generator
) -> Tensor:
    """Brightness, then contrast, then saturation jitter on a random ``prob`` share of the batch.

    Factors are drawn from U(1 - s, 1 + s) per image (factor 1 where the
    jitter is not applied). Saturation is skipped for 1-channel images. The
    order is fixed (torchvision shuffles it), which keeps this a few
    vectorised multiplies.
    """
    n, device = images.shape[0], images.device
    apply = bernoulli(n, prob, generator, device).to(images.dtype).view(n, 1, 1, 1)

    def factor(strength: float) -> Tensor:
        f = uniform(n, 1 - strength, 1 + strength, generator, device).view(n, 1, 1, 1)
        return 1 + (f - 1) * apply

    out = (images * factor(brightness)).clamp_(0, 1)
    mean = grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * factor(contrast) + mean).clamp_(0, 1)
    if images.shape[1] == 3 and saturation > 0:
        luma = grey(out)
        out = ((out - luma) * factor(saturation) + luma).clamp_(0, 1)
    return out


def random_grayscale(images: Tensor, prob: float, generator: Generator) -> Tensor:
    """Replace a random ``prob`` share of RGB images by their luma (no-op on 1 channel)."""
    chosen = bernoulli(images.shape[0], prob, generator, images.device)
    if images.shape[1] == 1 or prob <= 0:
        return images
    out = images.clone()
    out[chosen] = grey(images[chosen]).expand(-1, 3, -1, -1)
    return out


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per image, reflect padding, two grouped convs."""
    n, c, h, w = images.shape
    if n == 0:
        return images
    radius = min(math.ceil(3 * float(sigma.max())), h - 1, w - 1)
    if radius < 1:
        return images
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma.to(images).view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = images.reshape(1, n * c, h, w)
    padded = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(padded, kernel.view(n * c, 1, 1, -1), groups=n * c)
    padded = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(padded, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def random_blur(images: Tensor, prob: float, sigma: tuple[float, float], generator: Generator) -> Tensor:
    """Blur a random ``prob`` share of the batch, sigma ~ U(sigma) pixels per image."""
    n = images.shape[0]
    chosen = bernoulli(n, prob, generator, images.device)
    sigmas = uniform(n, sigma[0], sigma[1], generator, images.device)
    if prob <= 0 or not bool(chosen.any()):
        return images
    out = images.clone()
    out[chosen] = gaussian_blur(images[chosen], sigmas[chosen]).to(out.dtype)
    return out


def random_solarize(images: Tensor, prob: float, generator: Generator, threshold: float = 0.5) -> Tensor:
    """Invert pixels >= ``threshold`` in a random ``prob`` share of the batch."""
    chosen = bernoulli(images.shape[0], prob, generator, images.device).view(-1, 1, 1, 1)
    if prob <= 0:
        return images
    return torch.where(chosen & (images >= threshold), 1.0 - images, images)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images - mean) / std`` with per-channel ``[C]`` constants."""
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def resize_short_side_crop(images: Tensor, size: int) -> Tensor:
    """Resize so the short side is ``size`` (bilinear, antialiased) and keep the centre square."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    out = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return out[..., top : top + size, left : left + size]
