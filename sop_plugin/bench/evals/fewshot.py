"""Few-shot (semi-supervised) evaluation: the linear probe trained on 1 % and 10 % of the labels.

The labelled subsets are class-balanced and fixed by the seed alone (the same images for
every method and for the random-init control), and nested: the 1 % subset is the first
part of the 10 % one. The probe is :func:`sop_plugin.bench.evals.probes.linear_probe`, run
longer than the full-data probe since there are far fewer samples per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sop_plugin.bench.evals._common import settings_from, stream_seed
from sop_plugin.bench.evals.probes import linear_probe


@dataclass(frozen=True)
class FewshotSettings:
    """``eval.fewshot``: subsets (name -> fraction of the labelled training images) and the probe."""

    fractions: dict[str, float] = field(default_factory=lambda: {"1pct": 0.01, "10pct": 0.1})
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if not self.fractions:
            raise ValueError("eval.fewshot.fractions is empty")
        for name, frac in self.fractions.items():
            if not 0.0 < float(frac) <= 1.0:
                raise ValueError(f"eval.fewshot.fractions.{name}={frac} must be in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("eval.fewshot.epochs and batch_size must be >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> FewshotSettings:
        return settings_from(cls, values, "eval.fewshot")


def balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a class-balanced subset holding about ``fraction`` of the labelled images.

    Every class gets the same number of images, ``max(1, round(fraction * n / C))`` (``n``
    labelled images, ``C`` classes present), capped at the class's size. Images of a class
    are taken in the order of one seeded permutation per class, so for one seed a smaller
    fraction's subset is contained in a larger one's. Labels ``-1`` (unlabelled) never enter.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = labels.long().cpu()
    classes = torch.unique(labels[labels >= 0])
    if classes.numel() == 0:
        raise ValueError("no labelled images")
    n_labelled = int((labels >= 0).sum())
    per_class = max(1, round(fraction * n_labelled / classes.numel()))
    chosen = []
    for c in classes.tolist():
        members = torch.nonzero(labels == c).flatten()
        gen = torch.Generator().manual_seed(stream_seed(seed, "fewshot", c))
        order = members[torch.randperm(members.numel(), generator=gen)]
        chosen.append(order[:per_class])
    return torch.cat(chosen).sort().values


def fewshot_subsets(labels: Tensor, settings: FewshotSettings, seed: int) -> dict[str, Tensor]:
    """Subset name -> sorted indices, for every fraction of ``settings``."""
    return {name: balanced_subset(labels, float(frac), seed) for name, frac in settings.fractions.items()}


def fewshot_top1(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    subsets: Mapping[str, Tensor],
    settings: FewshotSettings,
    seed: int,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Subset name -> test top-1 (percent) of the linear probe trained on ``train_x[subset]``.

    ``train_x`` rows are the training images in ``subsets``' index space; the probe's class
    count comes from all of ``train_y`` so a subset missing a class still scores fairly.
    """
    if num_classes is None:
        num_classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    out = {}
    for name, idx in subsets.items():
        out[name] = linear_probe(
            train_x[idx],
            train_y[idx],
            test_x,
            test_y,
            epochs=settings.epochs,
            lr=settings.lr,
            batch_size=min(settings.batch_size, idx.numel()),
            weight_decay=settings.weight_decay,
            seed=seed,
            num_classes=num_classes,
        )
    return out
