"""Loaders, one module per kind of source; each registers its datasets when imported."""

from . import animal, folder, idx_sets, torchvision_sets  # noqa: F401  (registration)
