"""The error of a setting that cannot work, the run's process count and the ``resume`` check.

The config itself is validated by :func:`sop_plugin.bench.settings.bench_settings`; every message names
the setting and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sop_plugin.bench.train.resume import resolve_resume
from sop_plugin.runtime import world_size as runtime_world_size


class ConfigError(ValueError):
    """A benchmark setting that cannot work; raised before any training starts."""


def world_size(trainer_cfg: dict[str, Any]) -> int:
    """Processes of the ``trainer`` section (devices x nodes)."""
    return runtime_world_size(trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1))


def check_resume(cfg: dict[str, Any]) -> dict[str, Path]:
    """Method -> checkpoint for ``resume``, checked before training.

    See :mod:`sop_plugin.bench.train.resume`.
    """
    try:
        return resolve_resume(cfg)
    except ValueError as err:
        if type(err) is ValueError:
            raise ConfigError(str(err)) from err
        raise
