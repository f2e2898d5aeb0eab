"""Checks before training that turn solo-learn failures of a first run into messages naming the fix.

Each one used to fail late (after an epoch, or deep inside solo-learn) with an error that does not
say what to change: :func:`preflight` raises ``ValueError`` before the Trainer starts instead.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig
from solo.utils.misc import omegaconf_select

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def dino_warmup_problem(cfg: DictConfig) -> str | None:
    """solo-learn's DINO builds its temperature schedule with ``max_epochs - warm-up`` entries."""
    if omegaconf_select(cfg, "method") != "dino":
        return None
    warm = int(omegaconf_select(cfg, "method_kwargs.warmup_teacher_temperature_epochs", 0) or 0)
    epochs = int(omegaconf_select(cfg, "max_epochs", 0) or 0)
    if warm <= epochs:
        return None
    return (
        f"method_kwargs.warmup_teacher_temperature_epochs={warm} > max_epochs={epochs}: solo-learn's DINO "
        "fails on it ('ValueError: negative dimensions are not allowed' in solo/losses/dino.py). Set "
        f"method_kwargs.warmup_teacher_temperature_epochs={epochs} (or fewer), or raise max_epochs"
    )


def _class_counts(folder: str) -> list[int]:
    """Images per class folder, in ImageFolder's (sorted) order."""
    counts = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            files = (f for _, _, names in os.walk(entry.path) for f in names)
            counts.append(sum(1 for f in files if f.lower().endswith(IMAGE_SUFFIXES)))
    return counts


def limited_val_problem(cfg: DictConfig) -> str | None:
    """``limit_val_batches`` on a class-sorted image folder leaves solo-learn's online kNN classes short."""
    limit = omegaconf_select(cfg, "limit_val_batches", None)
    if (
        limit is None
        or not omegaconf_select(cfg, "knn_eval.enabled", False)
        or omegaconf_select(cfg, "data.format", "") == "h5"
    ):
        return None
    val = omegaconf_select(cfg, "data.val_path", None)
    if val is None or not os.path.isdir(str(val)):
        return None
    counts = _class_counts(str(val))
    total = sum(counts)
    if isinstance(limit, float) and limit <= 1.0:
        seen = int(limit * total)
    else:
        seen = int(limit) * int(omegaconf_select(cfg, "optimizer.batch_size", 1))
    covered, start = 0, 0
    for n in counts:
        covered += int(start < seen and n > 0)
        start += n
    if seen >= total or covered >= len([n for n in counts if n > 0]):
        return None
    return (
        f"limit_val_batches={limit} with knn_eval.enabled=True: the validation folder {val} is read in class "
        f"order, so the first {seen} of its {total} images hold {covered} of its {len(counts)} classes, and "
        "solo-learn's online kNN (which counts classes from the validation labels) fails after the first "
        "epoch ('index ... is out of bounds'). Validate on a smaller folder instead (e.g. `sop-data export "
        "fashion-mnist DIR --limit 1000`) without limit_val_batches, or set knn_eval.enabled=False"
    )


def preflight(cfg: DictConfig) -> None:
    """Raise ``ValueError`` listing every known-bad combination of a pretraining config."""
    problems = [p for p in (dino_warmup_problem(cfg), limited_val_problem(cfg)) if p]
    if problems:
        raise ValueError("this run would fail in solo-learn:\n  - " + "\n  - ".join(problems))
