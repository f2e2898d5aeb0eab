"""How many processes a Lightning ``devices`` / ``num_nodes`` setting starts, and which one is first.

Shared by both hosts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def num_devices(devices: Any) -> int:
    """Devices a Lightning ``devices`` value names: 4, [0, 1], "2", "0,1"; 1 when it cannot tell."""
    if isinstance(devices, str):
        text = devices.strip()
        if text.isdigit():
            return max(1, int(text))
        return len([d for d in text.split(",") if d.strip()]) if "," in text else 1
    if isinstance(devices, Sequence):  # list, tuple, OmegaConf ListConfig
        return max(1, len(devices))
    if isinstance(devices, int):
        return max(1, devices)
    return 1


def world_size(devices: Any = 1, num_nodes: Any = 1) -> int:
    """Processes of a run: devices per node x nodes."""
    return num_devices(devices) * max(1, int(num_nodes or 1))


def is_rank_zero() -> bool:
    """Whether this process is DDP's first (or the only) one, from ``LOCAL_RANK`` and ``NODE_RANK``.

    Read from the environment: the hosts also ask where no Trainer is at hand (before one is built,
    after it is gone).
    """
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
