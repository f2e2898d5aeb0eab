"""Datasets and batched augmentation for sop-plugin.

Datasets load fully into memory as uint8 ``[N, C, H, W]`` tensors
(:class:`ArrayDataset`) through one registry (:func:`get_dataset`);
:class:`MultiCropAugment` turns a uint8 batch into normalised multi-crop
views in a few tensor calls. Nothing downloads unless ``download=True``.
"""

from . import sources  # noqa: F401  (each source registers its datasets)
from .augment import EvalTransform, MultiCropAugment
from .dataset import ArrayDataset, channel_stats
from .errors import DatasetCorruptError, DatasetNotFoundError
from .export import export_image_folder
from .idx import IdxFormatError, read_idx, read_idx_images, read_idx_labels, write_idx
from .registry import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    dataset_options,
    get_dataset,
    get_spec,
    list_datasets,
    register_dataset,
)
from .splits import canonical_split, stratified_holdout

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "ArrayDataset",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "EvalTransform",
    "IdxFormatError",
    "MultiCropAugment",
    "canonical_split",
    "channel_stats",
    "dataset_options",
    "export_image_folder",
    "get_dataset",
    "get_spec",
    "list_datasets",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "register_dataset",
    "stratified_holdout",
    "write_idx",
]
