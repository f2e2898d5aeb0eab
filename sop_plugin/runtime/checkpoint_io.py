"""Atomic, safe-to-load checkpoint files for any Lightning Trainer."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sop_plugin.runtime.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic writes (temporary file next to the target, fsync, rename) and safe reads of checkpoints.

    A crash or SIGKILL mid-write leaves the previous checkpoint intact plus a partial
    ``<name>.<pid>.tmp``, which is never read and is removed by the next save of ``<name>``
    (:func:`remove_stale_tmp`). Reads go through :func:`sop_plugin.runtime.checkpoint.load_checkpoint`:
    torch's ``weights_only`` unpickler, truncated files refused, unknown pickled types only
    with ``trust_checkpoint``.
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``<path>.<pid>.tmp``, fsync it, rename it over ``path``.

        The bytes go straight into the temporary file next to the target (not through
        Lightning's ``_atomic_save``, whose fsspec transaction stages them in ``$TMPDIR``,
        where a killed writer's partial file would never be cleaned up).
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (local files only)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            self._commit(checkpoint, tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, checkpoint: dict[str, Any], tmp: Path, path: Path) -> None:
        """Rename the complete temporary file over ``path`` and make that durable (the one switch-over
        point)."""
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, trust_checkpoint=self.trust_checkpoint, map_location="cpu")


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the ``<path>.<pid>.tmp`` files whose writer process is gone; return them.

    Such a file is what a writer killed mid-save leaves behind: partial, never read, but
    as large as a checkpoint. A file whose pid is a live process (another writer, or a reused
    pid) is left alone.
    """
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 1 : -len(".tmp")]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        tmp.unlink(missing_ok=True)
        log.warning("removed %s: a partial checkpoint left by process %s, killed while writing it", tmp, pid)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
