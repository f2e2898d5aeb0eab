"""Global RNG states (Python, NumPy, torch CPU and CUDA) saved in and restored from checkpoints.

Hosts whose data pipeline draws from the global generators (solo-learn's shuffling
``DataLoader`` and random augmentations, DataLoader worker seeds) can only resume
*exactly* when those generators continue where the interrupted run left them. Lightning
does not save them; this callback does, as plain tensors and numbers, so the checkpoint
still loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The current global RNG states, in types torch's safe unpickler accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs to a state made by :func:`capture_rng_state`."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class RNGStateCheckpoint(L.Callback):
    """Saves the global RNG states with every checkpoint and restores them on resume.

    The states are restored at the start of the first training epoch after the resume,
    not when the checkpoint is read: Lightning draws from the global generator in between
    (it builds a throw-away data iterator to count the steps), while the uninterrupted run
    draws nothing between its checkpoint and its next epoch. Resuming from a checkpoint
    saved at the end of an epoch (solo-learn's Checkpointer) is thereby exact; a mid-epoch
    resume restarts that epoch's data order, as Lightning does anyway.

    Under DDP only rank 0's states are saved and all ranks restore them, which is what
    ``seed_everything`` gives every rank on a fresh start.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
