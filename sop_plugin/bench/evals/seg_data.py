"""The segmentation sets: canvases built from the benchmark's own images, or a folder of images and masks.

Canvases (no download): a ``grid x grid`` canvas of item-sized cells, each cell holding a
random item with probability ``fill_prob``, shifted by up to ``jitter`` pixels (so item edges
do not fall on patch edges); an item's foreground (any channel above ``fg_threshold``) is
pasted over what lies below and labels its pixels ``1 + class``, everything else is
background ``0``. Training canvases use training images only, held-out canvases test images
only; both are fixed by the seed and cached under ``cache_dir`` (default ``<run>/cache``).
Meant for dark-background item sets (the MNIST family). A mask folder (``path``):
``<path>/{train,val|test}/{images,masks}/``, see :func:`load_mask_folder`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sop_plugin.bench.evals._common import settings_from, stream_seed
from sop_plugin.data.sources.folder import IMAGE_EXTENSIONS, decode, resize_center_crop, to_channels

log = logging.getLogger("sop_bench")

IGNORE = 255
"""Mask value of pixels that count nowhere (mask folders only; canvases label every pixel)."""

#: settings that change the canvases (the cache key); the rest only change the probe
CANVAS_KEYS = ("train_canvases", "test_canvases", "grid", "jitter", "fill_prob", "fg_threshold")


@dataclass(frozen=True)
class SegSettings:
    """``eval.seg``: where the set comes from, how canvases are built, and the probe's training."""

    path: str | None = None
    image_size: int | None = None
    train_canvases: int = 2000
    test_canvases: int = 500
    grid: int = 2
    jitter: int = 3
    fill_prob: float = 0.75
    fg_threshold: int = 20
    cache_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-2
    weight_decay: float = 1e-4
    feature_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.grid < 1 or self.jitter < 0 or not 0.0 < self.fill_prob <= 1.0:
            raise ValueError("eval.seg: grid must be >= 1, jitter >= 0 and fill_prob in (0, 1]")
        if self.train_canvases < 1 or self.test_canvases < 1:
            raise ValueError("eval.seg.train_canvases and test_canvases must be >= 1")
        if self.epochs < 1 or self.batch_size < 1 or self.feature_batch_size < 1:
            raise ValueError("eval.seg.epochs, batch_size and feature_batch_size must be >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SegSettings:
        values = dict(values or {})
        for key in ("path", "cache_dir"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        if values.get("image_size") is not None:
            values["image_size"] = int(values["image_size"])
        return settings_from(cls, values, "eval.seg")


@dataclass(frozen=True, eq=False)
class SegSet:
    """Images uint8 ``[N, C, H, W]`` and masks uint8 ``[N, H, W]`` (0 = background, ``IGNORE`` = skip)."""

    images: Tensor
    masks: Tensor
    class_names: tuple[str, ...]  # index = mask value; 0 is the background

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n, _, h, w = self.images.shape
        if self.masks.dtype != torch.uint8 or tuple(self.masks.shape) != (n, h, w):
            raise ValueError(
                f"masks must be uint8 [{n},{h},{w}], got {self.masks.dtype} {tuple(self.masks.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------------------------- canvases
def make_canvases(
    images: Tensor, labels: Tensor, n: int, settings: SegSettings, seed: int, class_names: Sequence[str]
) -> SegSet:
    """``n`` canvases of items drawn (with replacement) from ``images``; see the module docstring."""
    src = images.cpu().numpy()
    lab = labels.cpu().numpy().astype(np.int64)
    _, channels, h, w = src.shape
    if h != w:
        raise ValueError(f"canvases need square items, got {h}x{w}")
    if len(class_names) + 1 >= IGNORE:
        raise ValueError(f"{len(class_names)} classes do not fit a uint8 mask")
    pool = np.nonzero(lab >= 0)[0]
    if pool.size == 0:
        raise ValueError("canvases need labelled images")
    g, jitter = settings.grid, settings.jitter
    size = g * h
    cells = g * g
    rng = np.random.default_rng(seed)
    out = np.zeros((n, channels, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        filled = rng.random(cells) < settings.fill_prob
        forced = rng.integers(cells)
        picks = pool[rng.integers(pool.size, size=cells)]
        shifts = rng.integers(-jitter, jitter + 1, size=(cells, 2))
        if not filled.any():
            filled[forced] = True
        for cell in np.nonzero(filled)[0]:
            row, col = divmod(int(cell), g)
            y = int(np.clip(row * h + shifts[cell, 0], 0, size - h))
            x = int(np.clip(col * w + shifts[cell, 1], 0, size - w))
            item = src[picks[cell]]
            fg = item.max(axis=0) > settings.fg_threshold
            out[i, :, y : y + h, x : x + w][:, fg] = item[:, fg]
            masks[i, y : y + h, x : x + w][fg] = lab[picks[cell]] + 1
    return SegSet(torch.from_numpy(out), torch.from_numpy(masks), ("background", *class_names))


def _fingerprint(images: Tensor, labels: Tensor) -> str:
    digest = hashlib.sha1(images.contiguous().cpu().numpy().tobytes())
    digest.update(labels.contiguous().cpu().numpy().astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def canvas_sets(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    class_names: Sequence[str],
    settings: SegSettings,
    seed: int,
    cache_dir: str | Path | None = None,
) -> tuple[SegSet, SegSet]:
    """(training canvases from the training images, held-out canvases from the test images), cached.

    The cache file's name holds a hash of the canvas settings, the seed and the source
    images, so a changed setting or dataset builds anew and a repeat reads the file.
    """
    spec = {k: asdict(settings)[k] for k in CANVAS_KEYS}
    key = hashlib.sha1(
        json.dumps(
            {
                "spec": spec,
                "seed": int(seed),
                "classes": list(class_names),
                "train": _fingerprint(train_images, train_labels),
                "test": _fingerprint(test_images, test_labels),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"seg-canvases-{key}.npz" if cache_dir is not None else None
    names = ("background", *class_names)
    if path is not None and path.is_file():
        with np.load(path) as data:
            log.info("segmentation canvases from the cache %s", path)
            return (
                SegSet(torch.from_numpy(data["train_images"]), torch.from_numpy(data["train_masks"]), names),
                SegSet(torch.from_numpy(data["test_images"]), torch.from_numpy(data["test_masks"]), names),
            )
    train = make_canvases(
        train_images,
        train_labels,
        settings.train_canvases,
        settings,
        stream_seed(seed, "canvas_train"),
        class_names,
    )
    test = make_canvases(
        test_images,
        test_labels,
        settings.test_canvases,
        settings,
        stream_seed(seed, "canvas_test"),
        class_names,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                train_images=train.images.numpy(),
                train_masks=train.masks.numpy(),
                test_images=test.images.numpy(),
                test_masks=test.masks.numpy(),
            )
        os.replace(tmp, path)
    return train, test


# ---------------------------------------------------------------------------------------------- mask folders
MASK_SPLITS = {"train": ("train",), "test": ("val", "test")}


def load_mask_folder(root: str | Path, split: str, channels: int, image_size: int | None = None) -> SegSet:
    """A segmentation split from a folder of images and label masks.

    Layout::

        <root>/train/images/<name>.<ext>   any image PIL reads (grey or RGB)
        <root>/train/masks/<name>.png      8-bit label map of the same size: value k = class k,
                                           0 = background, 255 = ignored (palette PNGs: the index)
        <root>/val/...  (or test/)         the held-out split, same layout
        <root>/classes.txt                 optional: one class name per line, line 1 = mask value 0

    Images are converted to ``channels``; with ``image_size`` both are resized (short side,
    centre crop; bilinear for images, nearest for masks), else every image must share one size.
    """
    root = Path(root).expanduser()
    base = next((root / d for d in MASK_SPLITS[split] if (root / d).is_dir()), None)
    if base is None:
        raise FileNotFoundError(
            f"mask folder {root}: no {' or '.join(MASK_SPLITS[split])}/ for the {split} split"
        )
    img_dir, mask_dir = base / "images", base / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder {base} needs images/ and masks/ sub-folders")
    files = sorted(
        p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise FileNotFoundError(f"mask folder {img_dir} has no images")
    missing = [p.name for p in files if not (mask_dir / f"{p.stem}.png").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images in {img_dir} have no masks/<name>.png, e.g. {missing[:3]}"
        )
    images, masks = [], []
    for p in files:
        array, _ = decode(p, image_size)
        with Image.open(mask_dir / f"{p.stem}.png") as m:
            m.load()
            if m.mode not in ("L", "P", "1", "I", "I;16"):
                raise ValueError(f"mask {mask_dir / p.name} has mode {m.mode}: expected an 8-bit label map")
            if m.mode == "P":
                m = Image.fromarray(np.asarray(m, dtype=np.uint8))
            if image_size is not None:
                m = _nearest_crop(m, image_size)
            mask = np.asarray(m).astype(np.int64)
        if mask.shape != array.shape[:2]:
            raise ValueError(f"mask of {p.name} is {mask.shape}, its image {array.shape[:2]}")
        if mask.max() > IGNORE:
            raise ValueError(f"mask of {p.name} has value {mask.max()} > 255")
        images.append(to_channels(array, channels))
        masks.append(mask.astype(np.uint8))
    if len({a.shape for a in images}) > 1:
        raise ValueError(f"images in {img_dir} differ in size: set eval.seg.image_size")
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
    else:
        top = max(int(m[m != IGNORE].max(initial=0)) for m in masks)
        names = ("background", *(f"class_{k}" for k in range(1, top + 1)))
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    mask_t = torch.from_numpy(np.stack(masks))
    top = int(mask_t[mask_t != IGNORE].max()) if bool((mask_t != IGNORE).any()) else 0
    if top >= len(names):
        raise ValueError(f"mask value {top} but only {len(names)} classes in {names_file}")
    return SegSet(stacked, mask_t, names)


def seg_sets(
    settings: SegSettings,
    seed: int,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    class_names: Sequence[str],
    cache_dir: str | Path | None,
) -> tuple[SegSet, SegSet]:
    """The (train, held-out) segmentation sets that ``settings`` asks for."""
    if settings.path:
        channels = int(train_images.shape[1])
        return (
            load_mask_folder(settings.path, "train", channels, settings.image_size),
            load_mask_folder(settings.path, "test", channels, settings.image_size),
        )
    return canvas_sets(
        train_images,
        train_labels,
        test_images,
        test_labels,
        class_names,
        settings,
        seed,
        settings.cache_dir or cache_dir,
    )


# ---------------------------------------------------------------------------------------------- tokens


def _nearest_crop(mask: Image.Image, size: int) -> Image.Image:
    """A label mask resized like its image, without inventing labels (nearest neighbour)."""
    return resize_center_crop(mask, size, Image.Resampling.NEAREST)
