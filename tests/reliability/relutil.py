"""Helpers for the reliability tests.

The tiny SOP run (``tinydata.TINY_RUN``), loss capture, crashes, a stalled write.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

import tests.tinydata as tinydata
from sop_plugin.runtime import AtomicCheckpointIO
from tests.tinydata import TINY_RUN, compose_config


def overrides(out: Path, data: Path, extra: list[str] | None = None) -> list[str]:
    """Hydra overrides of a :data:`tinydata.TINY_RUN` run writing to ``out``."""
    return tinydata.overrides(TINY_RUN, out, data, extra)


def tiny_config(out: Path, data: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """The resolved config ``sop-bench`` would run with :func:`overrides`."""
    return compose_config(TINY_RUN, out, data, extra)


class LossRecorder(L.Callback):
    """Per-step training loss, keyed by the step that produced it."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[int(trainer.global_step) - 1] = float(loss)


class Crash(RuntimeError):
    """A simulated failure."""


class CrashAtStep(L.Callback):
    """Raise :class:`Crash` when step ``step`` is about to start (after its checkpoints were written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash before step {self.step}")


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (student, teacher, heads, memories), detached on CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max(
        ((k, float((a[k].double() - b[k].double()).abs().max())) for k in a if a[k].numel()),
        key=lambda kv: kv[1],
    )
    assert worst[1] <= atol, f"largest difference {worst[1]:.3g} in {worst[0]}"


def checkpoint_at(step: int) -> dict[str, Any]:
    """A 256 KiB checkpoint whose weights all equal ``step`` (tells the saves apart)."""
    return {"global_step": step, "state_dict": {"w": torch.full((256, 256), float(step))}}


class _StallingFile:
    """Proxy of the file being written: passes the first ``limit`` bytes, fsyncs them, prints
    ``ready <limit> <total>`` on stdout and blocks, mid-write, until the process is killed."""

    def __init__(self, f: Any, limit: int, total: int) -> None:
        self.f, self.limit, self.total, self.written = f, limit, total, 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.written + len(view) < self.limit:
            self.written += len(view)
            return self.f.write(view)
        self.f.write(view[: self.limit - self.written])
        self.f.flush()
        os.fsync(self.f.fileno())
        print(f"ready {self.limit} {self.total}", flush=True)
        sys.stdin.read()  # the parent SIGKILLs us here; should it close stdin instead, never finish the write
        os._exit(3)

    def flush(self) -> None:
        self.f.flush()


def save_then_stall_mid_write(path: str) -> None:
    """Child of the mid-write kill test.

    Save step 1 to ``path`` with :class:`AtomicCheckpointIO`, then save step 2 through the same code
    with ``torch.save``'s bytes stalled half-way (see :class:`_StallingFile`).
    """
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint(checkpoint_at(1), path)
    buffer = io.BytesIO()
    torch.save(checkpoint_at(2), buffer)
    total = len(buffer.getvalue())
    real_save = torch.save

    def stalling_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, _StallingFile(f, total // 2, total), *args, **kwargs)

    torch.save = stalling_save
    checkpoint_io.save_checkpoint(checkpoint_at(2), path)
    os._exit(4)  # unreachable: the write stalls until the kill
