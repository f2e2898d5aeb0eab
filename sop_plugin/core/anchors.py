"""Anchor selection rules by name (setting ``anchor_selection``); this module imports none of them.

A rule ``fn(memory_size, num_anchors, num_sets, generator, device) -> [T, P] long`` registers itself
here; only ``uniform`` (:func:`~sop_plugin.core.sops.sample_anchors`) exists (docs/design-notes.md).
"""

from collections.abc import Callable

from torch import Tensor

from sop_plugin.registry import Registry

ANCHOR_SELECTORS: Registry[Callable[..., Tensor]] = Registry("anchor selection")
