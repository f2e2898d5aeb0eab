"""Anchor selection strategies, by name.

Only ``uniform`` (without replacement, independent per set) is offered: a density-aware rule would
need its own definition and a benchmark against it first (docs/design-notes.md, "Anchor selection").
"""

from __future__ import annotations

from collections.abc import Callable

from sop_plugin.core.sops import sample_anchors

#: name -> fn(memory_size, num_anchors, num_sets, generator, device) -> [T, P] long
ANCHOR_SELECTORS: dict[str, Callable[..., object]] = {"uniform": sample_anchors}
