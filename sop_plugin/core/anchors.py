"""Anchor selection strategies, by name.

Only ``uniform`` (without replacement, independent per set) is offered: DESIGN.md
allows a density-aware rule only once it is documented and benchmarked against it.
"""

from __future__ import annotations

from collections.abc import Callable

from sop_plugin.core.sops import sample_anchors

#: name -> fn(memory_size, num_anchors, num_sets, generator, device) -> [T, P] long
ANCHOR_SELECTORS: dict[str, Callable[..., object]] = {"uniform": sample_anchors}
