"""Atomic, safe-to-load checkpoint files for any Lightning Trainer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from sop_plugin.runtime.checkpoint import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic writes (temporary file, fsync, rename) and safe reads of checkpoints.

    A crash or SIGKILL mid-write leaves the previous checkpoint intact (plus a stray
    ``*.tmp``, never read). Reads go through :func:`sop_plugin.runtime.checkpoint.load_checkpoint`:
    torch's ``weights_only`` unpickler, truncated files refused, unknown pickled types only
    with ``trust_checkpoint``.
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, trust_checkpoint=self.trust_checkpoint, map_location="cpu")
