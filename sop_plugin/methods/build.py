"""Build a registered method from a host's settings: typed config and masks first, then the module."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sop_plugin.methods.base import Method
from sop_plugin.methods.config import MaskConfig
from sop_plugin.methods.registry import method_class


def method_config(name: str, values: Mapping[str, Any], extra: Iterable[str] = ()) -> Any:
    """The typed, validated settings of method ``name`` from a mapping of its field names.

    ``extra``: the host's own keys in the same mapping (masks, optimiser, epoch counts), skipped.
    """
    return method_class(name).config_class.from_mapping(values, extra=extra)


def method_masks(name: str, values: Mapping[str, Any] | None = None) -> MaskConfig | None:
    """Method ``name``'s block masks: its authors' (``default_masks``) with ``values`` on top.

    None for a method that reads no patch tokens.
    """
    default = method_class(name).default_masks
    if default is None:
        return None
    return MaskConfig.from_mapping(values or {}, default)


def build_method(name: str, embed_dim: int, config: Any, masks: MaskConfig | None) -> Method:
    """Method ``name`` for a backbone with ``embed_dim``-dimensional tokens."""
    return method_class(name)(embed_dim, config, masks)


def describe_method(name: str, config: Any, masks: MaskConfig | None) -> dict[str, str]:
    """Method ``name``'s own knobs as text, without building it (results.json, reports)."""
    return method_class(name).describe(config, masks)
