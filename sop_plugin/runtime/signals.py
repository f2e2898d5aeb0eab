"""Recording SIGTERM / SIGINT instead of dying mid-step, and the exception a stopped run raises.

The process side of stopping a run on a signal, shared by both hosts (the benchmark and the
solo-learn binding); the Lightning side is :mod:`sop_plugin.runtime.interrupt`.

* :class:`SignalCatcher` is installed before ``fit`` (by the host). Its handler only records
  the signal (no exception in the middle of a step, for SIGINT either); a second signal is
  recorded and reported, never acted upon, so it cannot interrupt a checkpoint being written.
  Outside training, :meth:`SignalCatcher.immediate` sections (evaluation, data loading) are
  interrupted at once: there is no training state to save there.
* :class:`Interrupted` carries the signal, the step, the checkpoint to resume from and what was
  running; the host turns it into a message and exit status ``128 + signal``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L

#: the signals a run stops on
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for ``signal.SIGTERM``; ``"signal N"`` for a number that names no signal."""
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
        """The signal's name (``SIGTERM``)."""
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process killed by the signal: 128 + its number."""
        return 128 + self.signum

    def describe(self) -> str:
        """One line: the signal, the step and the method where known, and the phase."""
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
        """Whether the handler is installed (by :meth:`install`, not yet restored)."""
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
        """Record the signal (and pass the first on to DDP children); raise only inside
        an immediate section, never while a checkpoint is being written."""
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
        """One line on stderr from inside the handler."""
        with contextlib.suppress(OSError):
            os.write(2, f"{self.prog}: {text}\n".encode())

    # ------------------------------------------------------------------ sections
    @property
    def pending(self) -> bool:
        """Whether a signal has been received."""
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
