"""The pretrained backbone of linear evaluation: its weights read safely, loaded, and checked complete.

solo-learn's own loader reads ``pretrained_feature_extractor`` with ``torch.load`` and ignores
backbone weights it does not find; these functions read it with the safe loader
(:func:`sop_plugin.runtime.load_checkpoint`) and refuse a checkpoint that leaves a weight unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from solo.utils.misc import omegaconf_select

from sop_plugin.runtime import load_checkpoint


def trust_checkpoint(cfg: DictConfig) -> bool:
    """``++trust_checkpoint=True``: load checkpoints holding arbitrary pickled objects (runs their code)."""
    value = omegaconf_select(cfg, "trust_checkpoint", False)
    if not isinstance(value, bool):
        raise ValueError(f"trust_checkpoint={value!r} must be True or False")
    return value


def backbone_state(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` weights (prefix removed) of a pretraining checkpoint, read with the safe loader.

    ``trusted`` (``++trust_checkpoint=True``) allows other pickled types, with a warning.
    """
    path = str(path)
    if not path.endswith((".ckpt", ".pth", ".pt")):
        raise ValueError(f"pretrained_feature_extractor={path!r} must be a .ckpt, .pth or .pt file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_feature_extractor {path!r} does not exist")
    state = load_checkpoint(path, trust_checkpoint=trusted)
    state = state.get("state_dict", state)
    for prefix in ("backbone.", "encoder."):  # "encoder": checkpoints of old solo-learn versions
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            return weights
    raise ValueError(f"{path} holds no 'backbone.*' weights: is it a pretraining checkpoint?")


def check_backbone(backbone: torch.nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    """Raise unless ``backbone`` holds every one of its weights as ``weights`` gives it (solo-learn's
    loader ignores missing ones silently)."""
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in weights)
    if missing:
        raise ValueError(
            f"{path} does not fit the configured backbone: missing {missing[:8]} "
            "(check backbone.name and backbone.kwargs against the pretraining config)"
        )
    differ = sorted(k for k, v in own.items() if not torch.equal(v.cpu(), weights[k].to(v.dtype)))
    if differ:
        raise ValueError(f"the backbone weights {differ[:8]} were not loaded from {path}")


def load_backbone_weights(
    backbone: torch.nn.Module,
    ckpt_path: str | Path,
    trusted: bool = False,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load all ``backbone.*`` weights of a solo-learn (or SOP) checkpoint into ``backbone``, then check
    that none is missing (``weights``: the checkpoint's, read already)."""
    weights = backbone_state(ckpt_path, trusted) if weights is None else weights
    own = backbone.state_dict()
    backbone.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    check_backbone(backbone, weights, str(ckpt_path))
