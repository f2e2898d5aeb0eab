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

Here instead:

* :class:`SignalCatcher` is installed before ``fit`` (by the host). Its handler only records
  the signal (no exception in the middle of a step, for SIGINT either); a second signal is
  recorded and reported, never acted upon, so it cannot interrupt a checkpoint being written.
  Outside training, :meth:`SignalCatcher.immediate` sections (evaluation, data loading) are
  interrupted at once: there is no training state to save there.
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

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

#: the signals a run stops on
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


_PLAIN = re.compile(r"[\w/.\-+:@%~,]+")


def hydra_value(text: str) -> str:
    """``text`` as the value of a hydra override (quoted when hydra's grammar needs it, e.g. for ``=``)."""
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(Exception):
    """A run stopped by a signal.

    Attributes:
        signum: the signal (``signal.SIGTERM``, ``signal.SIGINT``, ...).
        step: optimisation steps done when it stopped (None: not known, e.g. outside training).
        checkpoint: the checkpoint to resume from (None: nothing to resume from).
        phase: what was running (``training``, ``evaluation``, ...).
        method: the method being trained or evaluated, where the host has one.
        run_dir: the run's output directory, where the host has one.
    """

    def __init__(
        self,
        signum: int,
        step: int | None = None,
        checkpoint: str | Path | None = None,
        phase: str = "training",
        method: str | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.signum = int(signum)
        self.step = step
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.phase, self.method = phase, method
        self.run_dir = Path(run_dir) if run_dir else None
        super().__init__(self.describe())

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process killed by the signal: 128 + its number."""
        return 128 + self.signum

    def describe(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        what = f" of {self.method}" if self.method else ""
        return f"interrupted by {self.signal_name}{where}{what} ({self.phase})"


class SignalCatcher:
    """Records SIGTERM/SIGINT instead of dying or raising mid-step.

    Use as a context manager around the run (it restores the previous handlers on exit)::

        with SignalCatcher(prog="sop-bench") as catcher:
            trainer = L.Trainer(callbacks=[InterruptCallback(catcher, checkpoint_path)], ...)
            trainer.fit(...)            # Interrupted at the next batch end after a signal
            with catcher.immediate("evaluation"):
                evaluate()              # Interrupted at once

    Handlers can only be installed from the main thread; elsewhere the catcher does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = SIGNALS, prog: str = "sop") -> None:
        self.signals = tuple(signals)
        self.prog = prog
        self.signum: int | None = None  # the first signal received
        self.count = 0  # signals received
        self.phase = "training"
        self._immediate = False
        self._saving = False
        self._raised = False
        self._previous: dict[int, Any] = {}
        self._forward: list[int] = []  # pids the signal is passed on to (DDP children)
        self._pid = os.getpid()

    # ------------------------------------------------------------------ installation
    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> SignalCatcher:
        """Install the handler (main thread only; idempotent)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return self
        self._pid = os.getpid()
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were installed before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def take_over(self, trainer: L.Trainer | None = None) -> None:
        """Install the handler again over the one Lightning registered when its loops started.

        On rank 0 of a DDP run launched by Lightning, the signal is passed on to the other
        ranks' processes, as Lightning's own handler does.
        """
        if not self.installed or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            if signal.getsignal(signum) is not self._handle:
                signal.signal(signum, self._handle)
        launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
        procs = getattr(launcher, "procs", None) or []
        self._forward = [int(p.pid) for p in procs if getattr(p, "pid", None)]
        # a SIGTERM between Lightning's registration and now reached both handlers: Lightning's
        # flag would make its loops raise SIGTERMException (exit status 0); the catcher has it
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and getattr(connector, "received_sigterm", False):
            connector.received_sigterm = False

    def __enter__(self) -> SignalCatcher:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    # ------------------------------------------------------------------ the handler
    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the main process stops it when it stops
        self.count += 1
        first = self.signum is None
        if first:
            self.signum = signum
            for pid in self._forward:
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)
        elif self._saving:
            self._note(f"{signal_name(signum)} again: still writing the checkpoint, stopping right after it")
        else:
            self._note(f"{signal_name(signum)} again: already stopping ({self.phase})")
        if self._immediate and not self._saving and not self._raised:
            self._raised = True
            raise Interrupted(self.signum, phase=self.phase)

    def _note(self, text: str) -> None:
        # os.write: print() is not safe inside a handler that may interrupt another print
        with contextlib.suppress(OSError):
            os.write(2, f"{self.prog}: {text}\n".encode())

    # ------------------------------------------------------------------ sections
    @property
    def pending(self) -> bool:
        return self.signum is not None

    def check(self, phase: str | None = None) -> None:
        """Raise :class:`Interrupted` if a signal has been received."""
        if self.signum is not None:
            self._raised = True
            raise Interrupted(self.signum, phase=phase or self.phase)

    def set_immediate(self, phase: str | None) -> None:
        """From now on a signal interrupts at once (``phase`` names what runs), or, with None, is only
        recorded (training: :class:`InterruptCallback` stops at the next batch end)."""
        if phase is None:
            self._immediate, self.phase = False, "training"
            return
        self.phase = phase
        self.check(phase)
        self._immediate = True

    @contextlib.contextmanager
    def immediate(self, phase: str) -> Iterator[None]:
        """A section a signal interrupts at once (no training state to save: evaluation, data loading)."""
        previous = self.phase
        self.set_immediate(phase)
        try:
            yield
        finally:
            self._immediate = False
            self.phase = previous
        self.check(phase)  # a signal the section swallowed

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """While a checkpoint is written: further signals are reported, never raised."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False


#: Lightnings with ``restarted_on_train_batch_end`` (2.6.6 here) know that a checkpoint written at
#: ``on_train_batch_end`` holds that batch (they complete its count on restart); older ones (2.1.2,
#: solo-learn's pin) restart from the last *completed* count and train one batch more in that epoch
_RESTARTS_ON_TRAIN_BATCH_END = hasattr(_TrainingEpochLoop, "restarted_on_train_batch_end")


def count_current_batch(checkpoint: dict[str, Any]) -> None:
    """Mark the batch in progress as completed in a checkpoint written at ``on_train_batch_end`` (older Lightning)."""
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
        self.catcher.install()
        self.catcher.set_immediate(None)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.catcher.take_over(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.catcher.take_over(trainer)
        self._stop_if_signalled(trainer, save=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_if_signalled(trainer, save=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer, save=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._writing and not _RESTARTS_ON_TRAIN_BATCH_END:
            count_current_batch(checkpoint)

    def _stop_if_signalled(self, trainer: L.Trainer, save: bool) -> None:
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
