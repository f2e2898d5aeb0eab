"""Write an :class:`ArrayDataset` as PNG image folders.

Layout: ``DIR/train/<class>/<index>.png`` and ``DIR/val/<class>/<index>.png``,
which torchvision's ``ImageFolder`` (and so solo-learn's ``custom`` dataset)
reads. Class folder names are the class names made file-system safe;
file names are the zero-padded index in the split, so sorting the files
gives the original order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import ArrayDataset

# Split name -> sub-folder name in the exported tree.
EXPORT_DIRS: dict[str, str] = {"train": "train", "test": "val"}
_UNSAFE = re.compile(r"[^\w.+-]+")


def safe_dirname(name: str) -> str:
    """``name`` with path separators and other unsafe characters replaced by ``_``
    ("T-shirt/top" -> "T-shirt_top")."""
    cleaned = _UNSAFE.sub("_", name).strip("._")
    return cleaned or "class"


def class_dirnames(class_names: tuple[str, ...]) -> list[str]:
    """Safe, unique folder names for ``class_names``."""
    names = [safe_dirname(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names {class_names} collide once made file-system safe: {names}")
    return names


def export_split(dataset: ArrayDataset, directory: Path, limit: int | None = None) -> int:
    """Write the first ``limit`` images (all: None) of ``dataset`` under ``directory``; return how many."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    names = class_dirnames(dataset.class_names)
    for name in names:
        (directory / name).mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(max(count - 1, 0))))
    images = dataset.images[:count].permute(0, 2, 3, 1).numpy()
    labels = dataset.labels[:count].tolist()
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        if label < 0:
            raise ValueError(f"{dataset.name}/{dataset.split} has unlabelled images; export needs labels")
        array = pixels[:, :, 0] if pixels.shape[2] == 1 else np.ascontiguousarray(pixels)
        Image.fromarray(array).save(directory / names[label] / f"{index:0{width}d}.png")
    return count


def export_image_folder(
    splits: dict[str, ArrayDataset], out_dir: str | Path, limit: int | None = None, overwrite: bool = False
) -> dict[str, int]:
    """Export ``{"train": ds, "test": ds}`` to ``out_dir/train`` and ``out_dir/val``; return the
    images written per folder.

    Refuses to write into a non-empty split folder unless ``overwrite``
    (existing files of the same name are then replaced; nothing is deleted).
    """
    out = Path(out_dir).expanduser()
    written: dict[str, int] = {}
    for split, dataset in splits.items():
        if split not in EXPORT_DIRS:
            raise ValueError(f"cannot export split {split!r}; expected one of {sorted(EXPORT_DIRS)}")
        target = out / EXPORT_DIRS[split]
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            hint = "pass overwrite=True (--overwrite) to write into it"
            raise FileExistsError(f"{target} is not empty; {hint}")
        written[EXPORT_DIRS[split]] = export_split(dataset, target, limit)
    return written
