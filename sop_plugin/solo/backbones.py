"""The benchmark's ViT for solo-learn: ``backbone.name: vit_custom`` with the sizes in ``backbone.kwargs``.

solo-learn's ``vit_tiny`` ... ``vit_large`` fix the width and depth and keep timm's initialisation; the
benchmark trains a timm ViT of any size initialised by lightly's ``MaskedVisionTransformerTIMM``
(xavier weights, a fixed 2-D sine-cosine position embedding). ``vit_custom`` is that backbone, built
by the benchmark's own code, so a solo-learn run trains exactly the ViT the benchmark trains.
"""

from __future__ import annotations

from typing import Any

from solo.methods.base import BaseMethod
from timm.models.vision_transformer import VisionTransformer

from sop_plugin.bench.train.encoder import MaskedEncoder

NAME = "vit_custom"


def vit_custom(method: str | None = None, **kwargs: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` without classifier, initialised as the benchmark's.

    ``kwargs`` are timm's (img_size, patch_size, embed_dim, depth, num_heads, drop_path_rate, ...).
    """
    vit = VisionTransformer(num_classes=0, **kwargs)
    MaskedEncoder(vit, initialize=True)  # lightly's initialisation, in place (the wrapper is not kept)
    return vit


def register_backbones() -> None:
    """Add :func:`vit_custom` to solo-learn's backbones (idempotent; another backbone under the name is
    an error)."""
    current = BaseMethod._BACKBONES.get(NAME)
    if current is not None and current is not vit_custom:
        raise ValueError(f"solo-learn already has a backbone named {NAME!r} ({current!r})")
    BaseMethod._BACKBONES[NAME] = vit_custom
