"""Nested configs as ``{dotted.key: value}``: how runs are compared setting by setting (resume, sweeps)."""

from __future__ import annotations

from typing import Any


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted.key: value}``."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    flat: dict[str, Any] = {}
    for k, v in cfg.items():
        flat.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat
