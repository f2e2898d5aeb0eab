"""SIGTERM / SIGINT: stop a Lightning run at the next batch boundary, with a checkpoint of that step.

What Lightning does on its own (read from the sources and checked on both versions the
project supports, 2.6.6 and solo-learn's 2.1.2; ``tests/runtime/test_interrupt.py``):

* **SIGTERM.** ``Trainer.fit`` registers a handler right before the loops start (after
  ``on_fit_start``), composed with the handler installed before it: Lightning's runs first
  (it sets ``trainer.received_sigterm``, forwards the signal to DDP children and, in 2.6.6
  under DDP, broadcasts a flag from *inside the handler*), then the earlier one. The loops
  raise ``SIGTERMException`` after the current batch, an epoch end or a validation batch;
  it is a ``SystemExit`` without a code, so the process exits with status **0** and no
  checkpoint is written. Under SLURM with auto-requeue Lightning also handles the requeue
  signal (SIGUSR1 by default): it saves ``hpc_ckpt_N.ckpt`` from inside that handler,
  i.e. possibly in the middle of a step, and runs ``scontrol requeue``.
* **SIGINT.** Lightning installs no handler: Python raises ``KeyboardInterrupt`` wherever the
  main thread is (mid-step too). 2.6.6 catches it in ``fit``, ignores further SIGINTs and calls
  ``sys.exit(1)``; 2.1.2 swallows it and ``fit`` returns as if training had finished.

Here instead, with a :class:`~sop_plugin.runtime.signals.SignalCatcher` installed by the host
before ``fit`` (it records a signal and raises nothing in the middle of a step; the process side,
:mod:`sop_plugin.runtime.signals`):

* :class:`InterruptCallback` puts the catcher's handler back over Lightning's as soon as the
  loops start (``on_sanity_check_start`` / ``on_train_start``), so Lightning never sees the
  signal (no ``SIGTERMException``, no broadcast inside a handler) and forwards it to DDP
  children itself. At the next batch end (or epoch end) every rank agrees on the signal
  (one all-reduce under DDP), the trainer writes a checkpoint of that step through its
  checkpoint IO (atomic with :class:`~sop_plugin.runtime.AtomicCheckpointIO`), and
  :class:`Interrupted` is raised, carrying the signal, the step and the checkpoint path.
  A checkpoint written at ``on_train_batch_end`` is what Lightning's own step checkpoints
  are, so resuming from it continues with the next step.
* The host turns :class:`Interrupted` into a message and exit status ``128 + signal``.

SLURM's requeue signal is left to Lightning (see docs/reliability.md, "Signals").
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

from sop_plugin.runtime.signals import Interrupted, SignalCatcher

#: Lightnings with ``restarted_on_train_batch_end`` (2.6.6 here) know that a checkpoint written at
#: ``on_train_batch_end`` holds that batch (they complete its count on restart); older ones (2.1.2,
#: solo-learn's pin) restart from the last *completed* count and train one batch more in that epoch
_RESTARTS_ON_TRAIN_BATCH_END = hasattr(_TrainingEpochLoop, "restarted_on_train_batch_end")


def count_current_batch(checkpoint: MutableMapping[str, Any]) -> None:
    """Mark the batch in progress as completed in a checkpoint written at ``on_train_batch_end``.

    For the older Lightnings (:data:`_RESTARTS_ON_TRAIN_BATCH_END` false), which would otherwise train
    that batch again on resume. ``checkpoint``: the dict Lightning is about to save, changed in place.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress:
        return
    for tracker in (progress["total"], progress["current"]):
        if tracker["completed"] == tracker["processed"] - 1:
            tracker["completed"] = tracker["processed"]


def agreed_signal(trainer: L.Trainer, catcher: SignalCatcher) -> int:
    """The signal to stop on, the same on every DDP rank (0: none); one all-reduce under DDP."""
    local = int(catcher.signum or 0)
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        flag = torch.tensor([local], dtype=torch.int64, device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
    return local


class InterruptCallback(L.Callback):
    """Stops ``fit`` at the next batch end after a signal, with a checkpoint of that step.

    Args:
        catcher: the installed :class:`SignalCatcher` (installed here at ``setup`` if the host
            did not; then it stays installed).
        checkpoint_path: ``f(trainer) -> path`` of the checkpoint to write.
        method: named in :class:`Interrupted` (host's choice).
        on_saved: ``f(trainer, path)`` called on every rank once the checkpoint is written.

    Add it after the callbacks whose state must be in the checkpoint of the step (Lightning
    runs ``ModelCheckpoint`` callbacks last anyway). A signal during validation (solo-learn
    validates once per epoch) stops at the epoch end that follows; a signal before the first
    step stops without a new checkpoint (``Interrupted.checkpoint`` is the one the run
    resumed from, if any). From ``setup`` on, signals are only recorded (an immediate section
    of the host ends there).
    """

    def __init__(
        self,
        catcher: SignalCatcher,
        checkpoint_path: Callable[[L.Trainer], str | Path],
        method: str | None = None,
        on_saved: Callable[[L.Trainer, Path], None] | None = None,
    ) -> None:
        self.catcher = catcher
        self.checkpoint_path = checkpoint_path
        self.method = method
        self.on_saved = on_saved
        self.saved: Path | None = None
        self._writing = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Install the catcher (if the host did not) and end any immediate section."""
        self.catcher.install()
        self.catcher.set_immediate(None)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the handler back from Lightning before validation."""
        self.catcher.take_over(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the handler back from Lightning; stop, without a new checkpoint,
        on a signal received before the first step."""
        self.catcher.take_over(trainer)
        self._stop_if_signalled(trainer, save=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Stop with a checkpoint of this step after a signal."""
        self._stop_if_signalled(trainer, save=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop with a checkpoint at the epoch end after a signal (one during validation stops here)."""
        self._stop_if_signalled(trainer, save=True)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: MutableMapping[str, Any]
    ) -> None:
        """Count the batch in progress in the interrupt's own checkpoint
        (older Lightnings, :func:`count_current_batch`)."""
        if self._writing and not _RESTARTS_ON_TRAIN_BATCH_END:
            count_current_batch(checkpoint)

    def _stop_if_signalled(self, trainer: L.Trainer, save: bool) -> None:
        """Raise :class:`Interrupted` if any rank got a signal, after
        writing a checkpoint of the step when ``save`` (every rank calls it; rank 0 writes)."""
        signum = agreed_signal(trainer, self.catcher)
        if not signum:
            return
        step = int(trainer.global_step)
        path: Path | None = None
        if save:
            path = Path(self.checkpoint_path(trainer))
            with self.catcher.saving():
                self._writing = True
                try:
                    trainer.save_checkpoint(path)  # every rank calls it, rank 0 writes
                finally:
                    self._writing = False
            self.saved = path
            if self.on_saved is not None:
                self.on_saved(trainer, path)
        elif trainer.ckpt_path:
            path = Path(trainer.ckpt_path)
        self.catcher._raised = True
        raise Interrupted(signum, step=step, checkpoint=path, phase="training", method=self.method)
