"""The bench's method sections turned into the typed settings of :mod:`sop_plugin.methods`.

A section holds the method's own fields (the one vocabulary shared with solo-learn's
``method_kwargs``) plus the bench's :data:`HOST_KEYS`. The last-layer freeze is given as a
fraction of the run here (the authors: 1 of 100+ epochs) and converted to steps once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sop_plugin.methods import MaskConfig, describe_method, method_config, method_masks

#: keys of a method's section that belong to the benchmark, not to the method
HOST_KEYS = ("masks", "optim", "freeze_last_layer_fraction")


@dataclass(frozen=True)
class MethodSettings:
    """What one method of a bench run is built from."""

    name: str
    config: Any
    masks: MaskConfig | None


def method_settings(cfg: dict[str, Any], method: str, total_steps: int) -> MethodSettings:
    """Typed settings of ``method`` for a run of ``total_steps`` steps; ``ValueError`` on a bad value.

    Masks: the method's own ``<method>.masks``, else the shared ``masks`` section.
    """
    section = cfg[method]
    config = method_config(method, section, extra=HOST_KEYS)
    fraction = section.get("freeze_last_layer_fraction")
    if fraction is not None:
        steps = math.ceil(float(fraction) * total_steps)
        config = dataclasses.replace(config, freeze_last_layer_steps=steps).validate()
    masks = method_masks(method, section.get("masks") or cfg["masks"])
    return MethodSettings(method, config, masks)


def peak_lr(cfg: dict[str, Any], method: str, world: int = 1) -> float:
    """``base_lr`` (the method's own ``<method>.optim.base_lr``, else the shared one) x global batch / 256."""
    base_lr = (cfg[method].get("optim") or {}).get("base_lr") or cfg["optim"]["base_lr"]
    return float(base_lr) * cfg["train"]["batch_size"] * world / 256


def recipe_summary(cfg: dict[str, Any], method: str, total_steps: int, world: int = 1) -> dict[str, str]:
    """What ``method`` trained with, for ``results.json`` and the report: the knobs that differ by method."""
    s = method_settings(cfg, method, total_steps)
    return {**describe_method(method, s.config, s.masks), "peak_lr": f"{peak_lr(cfg, method, world):.3g}"}
