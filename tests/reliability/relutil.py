"""Helpers for the reliability tests: the tiny SOP run (``tinydata.TINY_RUN``), loss capture, simulated crashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

import tests.tinydata as tinydata
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

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
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
        ((k, float((a[k].double() - b[k].double()).abs().max())) for k in a if a[k].numel()), key=lambda kv: kv[1]
    )
    assert worst[1] <= atol, f"largest difference {worst[1]:.3g} in {worst[0]}"
