"""``sop-bench`` slowed to ~0.2 s per step, so a test can signal or SIGKILL it mid-epoch.

Usage: ``python slow_bench.py <hydra overrides>``; the only change to the real CLI is a
sleep after every training step. Optional, through the environment:

* ``SOP_TEST_PROGRESS=FILE``: after every step, FILE holds ``<method> <steps done so far>``;
* ``SOP_TEST_SLOW_SAVE=SECONDS``: every checkpoint write sleeps this long after the temporary
  file is written and before it is renamed into place, after appending ``<step> <temporary
  file>`` to FILE.saves (a test signals the process again then);
* ``SOP_TEST_SLOW_EVAL=SECONDS``: the final evaluation of every method first writes
  ``<method> evaluating`` to FILE, then sleeps this long.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sop_plugin.bench import cli, runner
from sop_plugin.bench.train import callbacks
from sop_plugin.runtime.checkpoint_io import AtomicCheckpointIO

_original = callbacks.StepTimer.on_train_batch_end
_original_commit = AtomicCheckpointIO._commit
PROGRESS = os.environ.get("SOP_TEST_PROGRESS")
SLOW_SAVE = float(os.environ.get("SOP_TEST_SLOW_SAVE", "0"))
SLOW_EVAL = float(os.environ.get("SOP_TEST_SLOW_EVAL", "0"))
_original_eval = runner.evaluate


def _slow(self: Any, trainer: Any, *args: Any) -> None:
    _original(self, trainer, *args)
    if PROGRESS:
        tmp = Path(f"{PROGRESS}.tmp")
        tmp.write_text(f"{trainer.lightning_module.method} {int(trainer.global_step)}")
        tmp.replace(PROGRESS)
    time.sleep(0.2)


def _slow_commit(self: Any, checkpoint: dict, tmp: Path, path: Path) -> None:
    if PROGRESS:
        with open(f"{PROGRESS}.saves", "a") as f:
            f.write(f"{checkpoint.get('global_step')} {tmp}\n")
    time.sleep(SLOW_SAVE)
    _original_commit(self, checkpoint, tmp, path)


def _slow_eval(fitted: Any, *args: Any, **kwargs: Any) -> Any:
    if PROGRESS:
        Path(PROGRESS).write_text(f"{fitted.module.method} evaluating")
    time.sleep(SLOW_EVAL)
    return _original_eval(fitted, *args, **kwargs)


if __name__ == "__main__":
    callbacks.StepTimer.on_train_batch_end = _slow  # type: ignore[method-assign]
    if SLOW_SAVE > 0:
        AtomicCheckpointIO._commit = _slow_commit  # type: ignore[method-assign]
    if SLOW_EVAL > 0:
        runner.evaluate = _slow_eval
    cli.main()
