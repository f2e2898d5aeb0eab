"""The bench's method sections turned into the typed settings of :mod:`sop_plugin.methods`.

A section holds the method's own fields (the one vocabulary shared with solo-learn's
``method_kwargs``) plus the bench's :data:`HOST_KEYS`. The last-layer freeze is given as a
fraction of the run here (the authors: 1 of 100+ epochs); the module converts it to steps
when it builds the method, once the run's length is known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sop_plugin.methods import MaskConfig, describe_method, method_config, method_masks

#: keys of a method's section that belong to the benchmark, not to the method
HOST_KEYS = ("masks", "optim", "freeze_last_layer_fraction")


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with a linear warm-up then cosine learning rate and a cosine weight decay."""

    base_lr: float
    min_lr: float
    warmup_fraction: float
    weight_decay: float
    weight_decay_end: float
    clip_grad: float
    eps: float

    def peak_lr(self, global_batch: int) -> float:
        """``base_lr`` x global batch / 256 (the linear scaling rule of all three authors)."""
        return self.base_lr * global_batch / 256


@dataclass(frozen=True)
class MethodSettings:
    """What one method of a bench run is built from."""

    name: str
    config: Any
    masks: MaskConfig | None
    optim: OptimSettings
    freeze_last_layer_fraction: float | None

    def config_for(self, total_steps: int) -> Any:
        """The method's config for a run of ``total_steps`` steps (the freeze fraction in steps)."""
        if self.freeze_last_layer_fraction is None:
            return self.config
        steps = math.ceil(self.freeze_last_layer_fraction * total_steps)
        return dataclasses.replace(self.config, freeze_last_layer_steps=steps).validate()


def method_settings(cfg: Mapping[str, Any], method: str) -> MethodSettings:
    """Typed settings of ``method``; ``ValueError`` on a bad value.

    Masks: the method's own ``<method>.masks``, else the shared ``masks`` section. Optimiser: the
    shared ``optim`` with the method's own ``<method>.optim`` (its tuned values) on top.
    """
    section = cfg[method]
    config = method_config(method, section, extra=HOST_KEYS)
    fraction = section.get("freeze_last_layer_fraction")
    masks = method_masks(method, section.get("masks") or cfg["masks"])
    own = {k: v for k, v in (section.get("optim") or {}).items() if v is not None}
    o = {**cfg["optim"], **own}
    optim = OptimSettings(
        base_lr=float(o["base_lr"]),
        min_lr=float(o["min_lr"]),
        warmup_fraction=float(o["warmup_fraction"]),
        weight_decay=float(o["weight_decay"]),
        weight_decay_end=float(o.get("weight_decay_end", o["weight_decay"])),
        clip_grad=float(o.get("clip_grad", 0.0)),
        eps=float(o.get("eps", 1e-8)),
    )
    freeze = float(fraction) if fraction is not None else None
    return MethodSettings(method, config, masks, optim, freeze)


def recipe_summary(settings: MethodSettings, total_steps: int, global_batch: int) -> dict[str, str]:
    """What a method trained with, for ``results.json`` and the report: the knobs that differ by method."""
    described = describe_method(settings.name, settings.config_for(total_steps), settings.masks)
    return {**described, "peak_lr": f"{settings.optim.peak_lr(global_batch):.3g}"}
