"""The solo-learn host's ``method_kwargs``: its own keys, their defaults and checks, and the method's typed settings.

A method's ``method_kwargs`` are its config's fields (the vocabulary the bench shares, see
``docs/solo-learn.md``, "Names") plus :data:`SHARED_KEYS`, the host's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import omegaconf
from solo.utils.misc import omegaconf_select

from sop_plugin.methods import MaskConfig, method_config, method_masks
from sop_plugin.runtime import NonFiniteGuard, world_size

#: ``method_kwargs`` of the solo-learn host (not fields of the method's config), with their defaults.
SHARED_KEYS: dict[str, Any] = {
    # block masks of the student's global crops (ViT only): overrides of the method's authors' prob,
    # ratio and min_block (sop_plugin.methods, ``default_masks``)
    "masks": {},
    # the teacher-temperature warm-up in epochs, converted to warmup_teacher_temp_steps when
    # training starts (0: warmup_teacher_temp_steps as given)
    "warmup_teacher_temp_epochs": 0,
    # per-parameter gradient-norm clipping of the student (0 = off); all three authors clip at 3.0
    "clip_grad": 3.0,
    # non-finite loss: "stop" (error naming the culprit and the last checkpoint) or "skip"
    # (no update, buffers left as they were), giving up after this many skips in a row
    "on_nonfinite": "stop",
    "max_consecutive_skips": 10,
}


def global_batch_size(cfg: omegaconf.DictConfig) -> int | None:
    """Per-device batch size x devices x nodes, or None when the config does not say."""
    batch = omegaconf_select(cfg, "optimizer.batch_size", None)
    if batch is None:
        return None
    devices = omegaconf_select(cfg, "devices", 1)
    return int(batch) * world_size(devices, omegaconf_select(cfg, "num_nodes", 1))


def solo_method_config(cfg: omegaconf.DictConfig, name: str, host_keys: Sequence[str]) -> Any:
    """The typed config of method ``name`` from ``cfg.method_kwargs`` (defaults filled); seed None = the run's."""
    values = dict(cfg.method_kwargs)
    if "seed" in values and values["seed"] is None:
        values["seed"] = omegaconf_select(cfg, "seed", 0) or 0
    return method_config(name, values, extra=host_keys)


def method_settings(cfg: omegaconf.DictConfig, name: str, host_keys: Sequence[str]) -> tuple[Any, MaskConfig | None]:
    """The typed config and masks of method ``name`` from ``cfg.method_kwargs`` (defaults filled)."""
    return solo_method_config(cfg, name, host_keys), method_masks(name, cfg.method_kwargs.masks)


def fill_method_kwargs(cfg: omegaconf.DictConfig, defaults: Mapping[str, Any]) -> None:
    """Fill the missing ``method_kwargs`` from ``defaults`` (in place)."""
    for key, default in defaults.items():
        cfg.method_kwargs[key] = omegaconf_select(cfg, f"method_kwargs.{key}", default)


def shared_problems(cfg: omegaconf.DictConfig, method: str) -> list[str]:
    """What is wrong with the :data:`SHARED_KEYS` settings and the crops, one message each."""
    mk = cfg.method_kwargs
    errors = NonFiniteGuard.problems(mk.on_nonfinite, mk.max_consecutive_skips, "method_kwargs.")
    try:
        MaskConfig.from_mapping(mk.masks)
    except (TypeError, ValueError) as exc:
        errors.append(f"method_kwargs.masks: {exc}")
    for unit in ("warmup_teacher_temp", "freeze_last_layer"):
        epochs = float(omegaconf_select(cfg, f"method_kwargs.{unit}_epochs", 0) or 0)
        if epochs < 0:
            errors.append(f"method_kwargs.{unit}_epochs={epochs:g} must be >= 0")
        if epochs > 0 and float(omegaconf_select(cfg, f"method_kwargs.{unit}_steps", 0) or 0) > 0:
            errors.append(f"set method_kwargs.{unit}_epochs or {unit}_steps, not both")
    if float(mk.clip_grad) < 0:
        errors.append(f"method_kwargs.clip_grad={mk.clip_grad} must be >= 0 (0 disables clipping)")
    large = omegaconf_select(cfg, "data.num_large_crops", None)
    if large is not None and int(large) != 2:
        errors.append(
            f"{method} needs exactly 2 global (large) crops, the config yields {large}: the first "
            "augmentation pipeline's crop_size defines the large crops, give them num_crops "
            "summing to 2 and a different crop_size to the local crops"
        )
    return errors


def allow_local_crops(cfg: omegaconf.DictConfig, method: str) -> None:
    """A ViT with local crops (smaller than its img_size) needs timm's ``dynamic_img_size``."""
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
