"""The solo-learn host's ``method_kwargs``: its own keys and their defaults, and one parse of them all.

A method's ``method_kwargs`` are its config's fields (the vocabulary the bench shares, see
``docs/solo-learn.md``, "Names") plus :data:`SHARED_KEYS`, the host's own. :func:`parse_settings`
converts and checks every one of them once, into a :class:`SoloSettings`; nothing reads
``method_kwargs`` afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig
from solo.utils.misc import omegaconf_select

from sop_plugin.core import SOPConfig
from sop_plugin.methods import MaskConfig, method_config, method_masks
from sop_plugin.runtime import NonFiniteGuard, world_size

#: ``method_kwargs`` of the solo-learn host (not fields of the method's config), with their defaults.
SHARED_KEYS: dict[str, Any] = {
    # block masks of the student's global crops (ViT only): overrides of the method's authors' prob,
    # ratio and min_block (sop_plugin.methods, ``default_masks``)
    "masks": {},
    # the teacher-temperature warm-up in epochs, converted to steps when training starts
    # (0: the config's warmup_teacher_temp_steps)
    "warmup_teacher_temp_epochs": 0,
    # per-parameter gradient-norm clipping of the student (0 = off); all three authors clip at 3.0
    "clip_grad": 3.0,
    # non-finite loss: "stop" (error naming the culprit and the last checkpoint) or "skip"
    # (no update, buffers left as they were), giving up after this many skips in a row
    "on_nonfinite": "stop",
    "max_consecutive_skips": 10,
}


@dataclasses.dataclass(frozen=True)
class SoloSettings:
    """A method's ``method_kwargs``, converted and checked once (:func:`parse_settings`)."""

    #: the method's typed config (``SOPConfig``, ``IBOTConfig``, ...): its fields of ``method_kwargs``
    config: Any
    #: block masks of the student's global crops: the authors' with ``masks`` on top (None: no masks)
    masks: MaskConfig | None
    #: teacher-temperature warm-up in epochs (0: the config's ``warmup_teacher_temp_steps``)
    warmup_teacher_temp_epochs: float
    #: epochs without prototype updates (0: the config's ``freeze_last_layer_steps``, if it has one)
    freeze_last_layer_epochs: float
    #: per-parameter gradient-norm bound of the student (0: no clipping)
    clip_grad: float
    #: what a non-finite loss does ("stop" or "skip"), and how many skips in a row end the run
    on_nonfinite: str
    max_consecutive_skips: int

    def step_schedule(self, steps_per_epoch: float) -> tuple[int, int]:
        """(teacher-temperature warm-up, last-layer freeze) in steps, for a run of ``steps_per_epoch``.

        An epoch count is rounded up to whole steps (a positive count is never 0 steps); without
        one, the config's own step count holds.
        """

        def steps(epochs: float, given: int) -> int:
            return math.ceil(epochs * max(1, steps_per_epoch)) if epochs > 0 else int(given)

        warmup = steps(self.warmup_teacher_temp_epochs, self.config.warmup_teacher_temp_steps)
        freeze = steps(self.freeze_last_layer_epochs, getattr(self.config, "freeze_last_layer_steps", 0))
        return warmup, freeze


def global_batch_size(cfg: DictConfig) -> int | None:
    """Per-device batch size x devices x nodes, or None when the config does not say."""
    batch = omegaconf_select(cfg, "optimizer.batch_size", None)
    if batch is None:
        return None
    devices = omegaconf_select(cfg, "devices", 1)
    return int(batch) * world_size(devices, omegaconf_select(cfg, "num_nodes", 1))


def fill_defaults(cfg: DictConfig, defaults: dict[str, Any], method: str) -> None:
    """Fill the missing ``method_kwargs`` from ``defaults`` and, for a ViT with local crops, timm's
    ``dynamic_img_size`` (in place, before :func:`parse_settings`)."""
    if omegaconf_select(cfg, "method_kwargs", None) is None:
        cfg.method_kwargs = {}
    for key, default in defaults.items():
        cfg.method_kwargs[key] = omegaconf_select(cfg, f"method_kwargs.{key}", default)
    _allow_local_crops(cfg, method)


def _epochs(cfg: DictConfig, unit: str, errors: list[str]) -> float:
    """``method_kwargs.<unit>_epochs`` (0 when absent); a problem with it goes to ``errors``."""
    epochs = float(omegaconf_select(cfg, f"method_kwargs.{unit}_epochs", 0) or 0)
    if epochs < 0:
        errors.append(f"method_kwargs.{unit}_epochs={epochs:g} must be >= 0")
    if epochs > 0 and float(omegaconf_select(cfg, f"method_kwargs.{unit}_steps", 0) or 0) > 0:
        errors.append(f"set method_kwargs.{unit}_epochs or {unit}_steps, not both")
    return epochs


def _method_config(cfg: DictConfig, name: str, host_keys: Sequence[str], errors: list[str]) -> Any:
    """The typed config of method ``name`` (seed None = the run's); its problems go to ``errors``."""
    values = dict(cfg.method_kwargs)
    if "seed" in values and values["seed"] is None:
        values["seed"] = omegaconf_select(cfg, "seed", 0) or 0
    try:
        config = method_config(name, values, extra=host_keys)
        if isinstance(config, SOPConfig):
            config.validate(global_batch_size(cfg))
    except ValueError as exc:  # the configs list their problems one per "  - " line
        lines = [line.strip() for line in str(exc).splitlines()]
        errors.extend([line[2:] for line in lines if line.startswith("- ")] or [str(exc)])
        return None
    return config


def _crop_problem(cfg: DictConfig, method: str) -> str | None:
    """Every method of this host reads exactly two global crops."""
    large = omegaconf_select(cfg, "data.num_large_crops", None)
    if large is None or int(large) == 2:
        return None
    return (
        f"{method} needs exactly 2 global (large) crops, the config yields {large}: the first "
        "augmentation pipeline's crop_size defines the large crops, give them num_crops "
        "summing to 2 and a different crop_size to the local crops"
    )


def parse_settings(cfg: DictConfig, name: str, display_name: str, host_keys: Sequence[str]) -> SoloSettings:
    """The settings of method ``name`` from a filled ``cfg.method_kwargs``.

    Raises one ``ValueError`` listing every bad value (and the crops, if not two global ones).
    ``host_keys``: the keys of ``method_kwargs`` that are the host's, not the method config's.
    """
    mk = cfg.method_kwargs
    errors = NonFiniteGuard.problems(mk.on_nonfinite, mk.max_consecutive_skips, "method_kwargs.")
    masks = None
    try:
        masks = method_masks(name, mk.masks)
    except (TypeError, ValueError) as exc:
        errors.append(f"method_kwargs.masks: {exc}")
    warmup = _epochs(cfg, "warmup_teacher_temp", errors)
    freeze = _epochs(cfg, "freeze_last_layer", errors)
    if float(mk.clip_grad) < 0:
        errors.append(f"method_kwargs.clip_grad={mk.clip_grad} must be >= 0 (0 disables clipping)")
    crops = _crop_problem(cfg, display_name)
    if crops:
        errors.append(crops)
    config = _method_config(cfg, name, host_keys, errors)
    if errors:
        listed = "\n  - ".join(errors)
        raise ValueError(f"invalid {display_name} config (method_kwargs):\n  - {listed}")
    return SoloSettings(
        config=config,
        masks=masks,
        warmup_teacher_temp_epochs=warmup,
        freeze_last_layer_epochs=freeze,
        clip_grad=float(mk.clip_grad),
        on_nonfinite=str(mk.on_nonfinite),
        max_consecutive_skips=int(mk.max_consecutive_skips),
    )


def _allow_local_crops(cfg: DictConfig, method: str) -> None:
    """A ViT with local crops (smaller than its img_size) needs timm's ``dynamic_img_size``: set where
    not given, an error where turned off."""
    name = str(omegaconf_select(cfg, "backbone.name", ""))
    small = omegaconf_select(cfg, "data.num_small_crops", 0) or 0
    if not name.startswith("vit") or small <= 0:
        return
    if omegaconf_select(cfg, "backbone.kwargs.dynamic_img_size", None) is None:
        cfg.backbone.kwargs.dynamic_img_size = True
    elif not cfg.backbone.kwargs.dynamic_img_size:
        raise ValueError(
            f"{method} with local crops and a ViT needs backbone.kwargs.dynamic_img_size=True "
            "(local crops are smaller than the ViT's img_size)"
        )
