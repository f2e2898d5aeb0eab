"""2-D maps of the test embeddings, one panel per method, coloured by class.

UMAP (``umap-learn``, an install requirement: it installs from PyPI as pure wheels with its
numba/pynndescent/scikit-learn dependencies) with the cosine metric, the similarity every
other evaluation uses. ``backend="tsne"`` (or ``auto`` where umap-learn is missing) uses
scikit-learn's t-SNE instead. Every panel maps the same seeded subset of test images, and
the maps are seeded, so a repeat gives the same picture on one machine.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sop_plugin.bench.evals._common import progress, settings_from, stream_seed
from sop_plugin.bench.results.plots import plot_embedding_map

log = logging.getLogger("sop_bench")

BACKENDS = ("auto", "umap", "tsne")


@dataclass(frozen=True)
class MapSettings:
    """``eval.embedding_map``."""

    backend: str = "auto"
    max_points: int = 2000
    n_neighbors: int = 15
    min_dist: float = 0.1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"eval.embedding_map.backend={self.backend!r}: expected one of {BACKENDS}")
        if self.max_points < 3 or self.n_neighbors < 2:
            raise ValueError("eval.embedding_map.max_points must be >= 3 and n_neighbors >= 2")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> MapSettings:
        return settings_from(cls, values, "eval.embedding_map")


def resolve_backend(backend: str) -> str:
    """``umap`` or ``tsne``: ``auto`` is umap where umap-learn imports, else t-SNE."""
    if backend != "auto":
        return backend
    try:
        import umap  # noqa: F401
    except ImportError:
        log.warning("umap-learn is not installed: embedding map with scikit-learn's t-SNE")
        return "tsne"
    return "umap"


def map_points(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of the (seeded) test images every panel maps."""
    if n <= max_points:
        return np.arange(n)
    gen = torch.Generator().manual_seed(stream_seed(seed, "embedding_map"))
    return torch.randperm(n, generator=gen)[:max_points].sort().values.numpy()


def embed_2d(x: np.ndarray, settings: MapSettings, seed: int) -> tuple[np.ndarray, str]:
    """``[N, D]`` features -> ``([N, 2]`` map, backend used``)``."""
    x = np.asarray(x, dtype=np.float32)
    backend = resolve_backend(settings.backend)
    random_state = stream_seed(seed, "embedding_map") % (2**31)
    if backend == "umap":
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state" and numba notes
            reducer = umap.UMAP(
                n_components=2,
                n_neighbors=min(settings.n_neighbors, len(x) - 1),
                min_dist=settings.min_dist,
                metric="cosine",
                random_state=random_state,
            )
            return np.asarray(reducer.fit_transform(x), dtype=np.float32), "umap"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=random_state)
    return np.asarray(tsne.fit_transform(x), dtype=np.float32), "tsne"


def write_embedding_map(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: str | Path,
    settings: MapSettings,
    seed: int,
) -> tuple[Path, str]:
    """Map each name's ``(test features [N, D], labels [N])`` on the same subset; write one PNG."""
    panels = {}
    backend = resolve_backend(settings.backend)
    chosen = MapSettings(backend, settings.max_points, settings.n_neighbors, settings.min_dist)
    for name, (x, y) in progress(
        embeddings.items(), desc=f"embedding map ({backend})", total=len(embeddings)
    ):
        idx = map_points(len(x), settings.max_points, seed)
        log.info("embedding map (%s): %s, %d points", backend, name, len(idx))
        xy, _ = embed_2d(np.asarray(x)[idx], chosen, seed)
        panels[name] = (xy, np.asarray(y)[idx])
    return plot_embedding_map(panels, class_names, path, backend), backend
