"""Any image folder ``root/<class>/<image>`` (optionally ``root/{train,val}/<class>/<image>``).

Images are decoded with PIL into one in-memory uint8 tensor. Unreadable
files are skipped and counted; a warning reports the count, and the load
fails when their share exceeds ``max_corrupt_fraction`` or nothing is left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..dataset import ArrayDataset
from ..errors import DatasetCorruptError, DatasetNotFoundError
from ..registry import DataPath, register_dataset
from ..splits import SPLIT_SEED, TEST_FRACTION, stratified_holdout

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
# Sub-folder names accepted for each split, in order of preference.
SPLIT_DIRS: dict[str, tuple[str, ...]] = {"train": ("train",), "test": ("val", "test")}
DEFAULT_MAX_CORRUPT_FRACTION = 0.05
LAYOUT = "root/<class>/<image>"
# Errors PIL raises on truncated, corrupt or hostile files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class FileList:
    """Image files of one split and their class indices."""

    files: list[Path]
    labels: np.ndarray
    class_names: tuple[str, ...]


def class_dirs(directory: Path) -> list[Path]:
    """Visible sub-folders of ``directory``, sorted by name (ImageFolder's class order)."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(directory: Path) -> list[Path]:
    """Image files anywhere under ``directory``, by extension, sorted."""
    found = (p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def list_split(root: Path, split: str, test_fraction: float, seed: int) -> FileList:
    """Files of ``split``: from ``train``/``val`` sub-folders if ``root/train`` exists, else a
    per-class hold-out of ``root``."""
    split_layout = (root / "train").is_dir()
    train_dir = root / "train" if split_layout else root
    names = tuple(d.name for d in class_dirs(train_dir))
    if not names:
        raise DatasetNotFoundError(
            f"image folder {train_dir} has no class sub-folders; expected data.path/<class>/<image>"
        )
    if split_layout:
        directory = train_dir
        if split != "train":
            directory = next((root / d for d in SPLIT_DIRS[split] if (root / d).is_dir()), None)
            if directory is None:
                wanted = f"{' or '.join(SPLIT_DIRS[split])}/ for the {split} split"
                raise DatasetNotFoundError(f"image folder {root} has train/ but no {wanted}")
            extra = sorted({d.name for d in class_dirs(directory)} - set(names))
            if extra:
                raise ValueError(f"{directory} has classes missing from {train_dir}: {extra}")
        files, labels = _files_by_class(directory, names)
        return FileList(files, labels, names)
    files, labels = _files_by_class(root, names)
    chosen = stratified_holdout(labels, split, test_fraction, seed)
    return FileList([files[i] for i in chosen], labels[chosen], names)


def _files_by_class(directory: Path, names: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        if not (directory / name).is_dir():
            continue
        found = image_files(directory / name)
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def decode(path: Path, size: int | None) -> tuple[np.ndarray, bool]:
    """Decode one image to uint8 HxW (grey) or HxWx3; resize (short side + centre crop) when ``size``."""
    with Image.open(path) as image:
        image.load()
        grey = image.mode in GREY_MODES
        image = image.convert("L" if grey else "RGB")
    if size is not None:
        image = resize_center_crop(image, size)
    return np.asarray(image, dtype=np.uint8), grey


def resize_center_crop(
    image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BILINEAR
) -> Image.Image:
    """Scale the short side to ``size`` (bilinear by default; nearest for label masks), then cut the
    centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Turn an HxW or HxWx3 uint8 image into HxWx``channels``."""
    if array.ndim == 2:
        return np.repeat(array[:, :, None], channels, axis=2)
    if channels == 3:
        return array
    return np.clip(np.rint(array.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)[:, :, None]


@register_dataset("image-folder", f"any folder {LAYOUT} (or root/{{train,val}}/<class>/<image>)")
def load_image_folder(
    path: DataPath = None,
    split: str = "train",
    download: bool = False,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    max_corrupt_fraction: float = DEFAULT_MAX_CORRUPT_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> ArrayDataset:
    """Load an image folder into memory.

    Args:
        path: the folder root (``data.path``).
        split: ``train`` or ``test`` (``test`` reads ``val/`` or ``test/``).
            Without a ``train/`` sub-folder the classes are read from the root
            and split per class (``test_fraction``, ``seed``).
        download: must be False; a folder cannot be downloaded.
        image_size: side of the square images (short side resized, centre
            crop). ``None`` keeps the native size, which must then be the same
            for every image.
        channels: 1 or 3; ``None`` gives 1 when every image is greyscale, else 3.
        max_corrupt_fraction: largest tolerated share of unreadable files.

    Class indices follow the sorted class folder names of the training part,
    like torchvision's ``ImageFolder``. Mean/std are computed on this split.
    """
    if download:
        raise ValueError(f"image-folder cannot download anything: set data.path to a folder {LAYOUT}")
    if path is None:
        raise DatasetNotFoundError(
            f"image-folder needs data.path: a folder {LAYOUT} (or root/train/<class>/<image> + root/val/...)"
        )
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder not found: data.path={root} is not a directory")
    listing = list_split(root, split, test_fraction, seed)
    if not listing.files:
        extensions = sorted(IMAGE_EXTENSIONS)
        missing = f"image folder {root} has no images for the {split} split"
        raise DatasetNotFoundError(f"{missing} (extensions: {extensions})")

    arrays: list[np.ndarray] = []
    kept: list[int] = []
    all_grey = True
    bad: list[Path] = []
    for i, file in enumerate(listing.files):
        try:
            array, grey = decode(file, image_size)
        except _DECODE_ERRORS:
            bad.append(file)
            continue
        arrays.append(array)
        kept.append(i)
        all_grey &= grey
    _check_corrupt(root, split, bad, len(listing.files), max_corrupt_fraction)

    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images in {root} have {len(shapes)} different sizes; "
            "set the image_size option (data.image_size) to resize them"
        )
    target = channels or (1 if all_grey else 3)
    stacked = np.stack([to_channels(a, target) for a in arrays])
    labels, names = listing.labels[kept], listing.class_names
    return ArrayDataset.from_arrays("image-folder", split, stacked, labels, names, "NHWC")


def _check_corrupt(root: Path, split: str, bad: list[Path], total: int, limit: float) -> None:
    if not bad:
        return
    fraction = len(bad) / total
    examples = ", ".join(str(p) for p in bad[:3])
    if len(bad) == total or fraction > limit:
        raise DatasetCorruptError(
            f"{len(bad)} of {total} images in {root} ({split}) are unreadable "
            f"({fraction:.1%} > max_corrupt_fraction={limit:.1%}), e.g. {examples}"
        )
    message = "image-folder: skipped %d unreadable of %d images in %s (%s), e.g. %s"
    log.warning(message, len(bad), total, root, split, examples)
