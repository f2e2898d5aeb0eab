"""SIGTERM / SIGINT inside a Lightning fit, on whichever Lightning is installed.

That is 2.6.6 in .venv and 2.1.2 in .venv-solo.

The signal is sent by the process to itself from inside ``training_step``, so it lands
mid-step. Lightning alone ends the fit with no checkpoint (SIGTERM: ``SIGTERMException``, a
``SystemExit`` without a code, i.e. exit status 0; SIGINT: ``KeyboardInterrupt`` mid-step, then
``SystemExit(1)`` on 2.6.6 or a silent return on 2.1.2). With :class:`SignalCatcher` and
:class:`InterruptCallback` the step completes, its checkpoint is written and ``Interrupted``
names the signal, the step and the checkpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sop_plugin.runtime import AtomicCheckpointIO, load_checkpoint
from sop_plugin.runtime.interrupt import InterruptCallback
from sop_plugin.runtime.signals import Interrupted, SignalCatcher

LIGHTNING = tuple(int(p) for p in L.__version__.split(".")[:2])


class Tiny(L.LightningModule):
    """A linear model that signals its own process during step ``signal_at``."""

    def __init__(self, signum: int | None = None, signal_at: int = 3) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signum, self.signal_at = signum, signal_at
        self.completed: list[int] = []  # steps whose training_step ran to its end

    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        if self.signum is not None and step == self.signal_at:
            os.kill(os.getpid(), self.signum)  # the handler runs here, in the middle of the step
        loss = self.layer(batch[0]).pow(2).mean()
        self.completed.append(step)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, callbacks: list[L.Callback], max_epochs: int = 2) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(40, 4, generator=gen)), batch_size=4)  # 10 steps per epoch


@pytest.fixture(autouse=True)
def _restore_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    # Python's own SIGINT handler, also when the shell started pytest in the background (SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for s, h in before.items():
        signal.signal(s, h)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_step_checkpoints_that_step_and_raises_interrupted(signum: int, tmp_path: Path) -> None:
    ckpt = tmp_path / "interrupted.ckpt"
    model = Tiny(signum, signal_at=3)
    with SignalCatcher() as catcher:
        trainer = _trainer(tmp_path, [InterruptCallback(catcher, lambda trainer: ckpt, method="tiny")])
        with pytest.raises(Interrupted) as info:
            trainer.fit(model, _loader())
    stop = info.value
    assert stop.signum == signum and stop.exit_code == 128 + signum
    assert stop.step == 4 and stop.checkpoint == ckpt and stop.method == "tiny"
    assert model.completed == [0, 1, 2, 3]  # the step the signal landed in ran to its end, no further
    assert not trainer.received_sigterm  # Lightning never saw it (no SIGTERMException)
    saved = load_checkpoint(ckpt)
    assert saved["global_step"] == 4 and "optimizer_states" in saved and "loops" in saved
    assert not list(tmp_path.glob("*.tmp"))
    assert signal.getsignal(signum) is not catcher._handle  # handlers restored on exit

    # resuming from it runs the remaining 16 steps (2 epochs of 10)
    resumed = Tiny()
    trainer = _trainer(tmp_path, [])
    trainer.fit(resumed, _loader(), ckpt_path=str(ckpt))
    assert trainer.global_step == 20 and len(resumed.completed) == 16


def test_lightning_alone_stops_without_checkpoint_and_exit_status(tmp_path: Path) -> None:
    """What the callback replaces: SIGTERM ends ``fit`` with a code-less SystemExit (status 0)."""
    model = Tiny(signal.SIGTERM, signal_at=3)
    trainer = _trainer(tmp_path, [])
    with pytest.raises(SystemExit) as info:
        trainer.fit(model, _loader())
    assert info.value.code in (None, 0)  # a shell would see success
    assert model.completed[-1] == 3 and trainer.global_step == 4
    assert not list(tmp_path.rglob("*.ckpt"))


def test_lightning_alone_sigint_raises_mid_step(tmp_path: Path) -> None:
    """SIGINT without the catcher: KeyboardInterrupt inside the step (the step never completes)."""
    model = Tiny(signal.SIGINT, signal_at=3)
    trainer = _trainer(tmp_path, [])
    if LIGHTNING >= (2, 2):
        with pytest.raises(SystemExit) as info:  # 2.6.6: "attempting graceful shutdown", exit 1
            trainer.fit(model, _loader())
        assert info.value.code == 1
    else:
        trainer.fit(model, _loader())  # 2.1.2 swallows it: fit returns as if training had finished
        assert trainer.interrupted
    assert model.completed[-1] == 2  # step 3 was cut in the middle


def test_catcher_sections(tmp_path: Path) -> None:
    with SignalCatcher(prog="test") as catcher:
        with catcher.saving():  # signals while a checkpoint is written: recorded, never raised
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        assert catcher.signum == signal.SIGTERM and catcher.count == 2
        with pytest.raises(Interrupted, match="SIGTERM"):
            with catcher.immediate("evaluation"):  # a signal already received stops an immediate section
                pass
    with SignalCatcher() as catcher:
        with pytest.raises(Interrupted) as info:
            with catcher.immediate("evaluation"):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler raises at the next bytecode boundary
                    pass
                pytest.fail("not interrupted")
        assert info.value.phase == "evaluation" and info.value.signum == signal.SIGINT


class SignalAtTrainStart(L.Callback):
    """Sends SIGTERM while Lightning's own handler is installed (before the catcher takes over)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_while_lightnings_handler_is_installed_reaches_the_catcher(tmp_path: Path) -> None:
    """Lightning composes its handler with the catcher's: both run; the callback stops the fit, not
    Lightning's SIGTERMException."""
    with SignalCatcher() as catcher:
        callbacks = [SignalAtTrainStart(), InterruptCallback(catcher, lambda trainer: tmp_path / "x.ckpt")]
        trainer = _trainer(tmp_path, callbacks)
        with pytest.raises(Interrupted) as info:
            trainer.fit(Tiny(), _loader())
    assert info.value.signum == signal.SIGTERM and info.value.step == 0 and info.value.checkpoint is None
    assert not trainer.received_sigterm  # Lightning's flag (set by its half of the handler) was cleared
    assert not (tmp_path / "x.ckpt").exists()  # nothing trained, nothing to save
