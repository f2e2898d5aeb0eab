"""Settings checks of ``sop-bench``: everything that cannot work is refused before data is read.

Every message names the setting and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sop_plugin.bench.method_settings import method_settings
from sop_plugin.bench.resume import resolve_resume
from sop_plugin.core import SOPConfig
from sop_plugin.data import DATASETS, MultiCropAugment
from sop_plugin.methods import MaskConfig, method_names
from sop_plugin.runtime import POLICIES
from sop_plugin.runtime import world_size as runtime_world_size
from sop_plugin.runtime.masking import BlockMaskGenerator


class ConfigError(ValueError):
    """A benchmark setting that cannot work; raised before any training starts."""


def world_size(trainer_cfg: dict[str, Any]) -> int:
    """Processes of the ``trainer`` section (devices x nodes)."""
    return runtime_world_size(trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1))


def check_config(cfg: dict[str, Any]) -> None:
    """Reject settings that cannot work, naming the key and the fix (before any data is read)."""
    if not cfg["methods"]:
        raise ConfigError(f"methods is empty: list at least one of {method_names()}, e.g. methods=[sop]")
    unknown = [m for m in cfg["methods"] if m not in method_names()]
    if unknown:
        raise ConfigError(f"methods={cfg['methods']}: unknown {unknown}; choose from {method_names()}")
    name = str(cfg["data"]["name"]).strip().lower()
    if name not in DATASETS:
        raise ConfigError(
            f"data.name={cfg['data']['name']!r} is not a dataset; choose one of {sorted(DATASETS)} "
            f"(e.g. data=fashion-mnist, or data=image-folder data.path=DIR)"
        )
    m, crops = cfg["model"], cfg["crops"]
    for size_key in ("global_size", "local_size"):
        if crops[size_key] % m["patch_size"] != 0:
            raise ConfigError(
                f"crops.{size_key}={crops[size_key]} is not divisible by model.patch_size={m['patch_size']}: "
                f"pick sizes that are multiples of the patch size"
            )
    if m["embed_dim"] % m["num_heads"]:
        raise ConfigError(
            f"model.embed_dim={m['embed_dim']} must be divisible by model.num_heads={m['num_heads']}: "
            f"change one of them"
        )
    _check_augmentation(cfg)
    _check_train(cfg)
    for method in cfg["methods"]:
        try:
            settings = method_settings(cfg, method, total_steps=1)
            if isinstance(settings.config, SOPConfig):
                settings.config.validate(cfg["train"]["batch_size"] * world_size(cfg["trainer"]))
        except ValueError as err:
            raise ConfigError(f"{method}: {err} (settings under {method}.*)") from err


def _check_augmentation(cfg: dict[str, Any]) -> None:
    crops = cfg["crops"]
    grid = crops["global_size"] // cfg["model"]["patch_size"]
    sections = {"masks": cfg["masks"], **{f"{m}.masks": cfg[m]["masks"] for m in cfg["methods"] if cfg[m].get("masks")}}
    for name, mk in sections.items():
        try:
            masks = MaskConfig.from_mapping(mk)
            BlockMaskGenerator((grid, grid), masks.prob, masks.ratio, masks.min_block)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: {err}: fix {name}.prob / {name}.ratio") from err
    try:
        MultiCropAugment(
            global_size=crops["global_size"],
            local_size=crops["local_size"],
            num_local=crops["num_local"],
            global_scale=tuple(crops["global_scale"]),
            local_scale=tuple(crops["local_scale"]),
            **crops.get("extra", {}),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"crops: {err}: fix the crops.* settings") from err


def _check_train(cfg: dict[str, Any]) -> None:
    t = cfg["train"]
    if t["epochs"] < 1 and t["max_steps"] <= 0:
        raise ConfigError("train.epochs must be >= 1 (or set train.max_steps > 0)")
    if t["batch_size"] < 1:
        raise ConfigError(f"train.batch_size={t['batch_size']} must be >= 1")
    policy = t.get("on_nonfinite", "stop")
    if policy not in POLICIES:
        raise ConfigError(f"train.on_nonfinite={policy!r}; choose one of {list(POLICIES)}")
    every = t.get("checkpoint_every_n_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(
            f"train.checkpoint_every_n_steps={every!r} must be a positive integer or null (epoch ends only)"
        )
    chunk = t.get("rng_chunk")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1 or t["batch_size"] % chunk):
        raise ConfigError(
            f"train.rng_chunk={chunk!r} must be a positive divisor of train.batch_size={t['batch_size']} "
            f"(or null: one chunk per process)"
        )
    if not isinstance(cfg.get("trust_checkpoint", False), bool):
        raise ConfigError(f"trust_checkpoint={cfg.get('trust_checkpoint')!r} must be true or false")


def check_resume(cfg: dict[str, Any]) -> dict[str, Path]:
    """Method -> checkpoint for ``resume`` (see :mod:`sop_plugin.bench.resume`), checked before training."""
    try:
        return resolve_resume(cfg)
    except ValueError as err:
        if type(err) is ValueError:
            raise ConfigError(str(err)) from err
        raise
