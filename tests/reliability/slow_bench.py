"""``sop-bench`` slowed to ~0.2 s per step, so a test can SIGKILL it mid-epoch.

Usage: ``python slow_bench.py <hydra overrides>``; the only change to the real CLI is a
sleep after every training step.
"""

from __future__ import annotations

import time
from typing import Any

from sop_plugin.bench import callbacks, cli

_original = callbacks.StepTimer.on_train_batch_end


def _slow(self: Any, *args: Any) -> None:
    _original(self, *args)
    time.sleep(0.2)


if __name__ == "__main__":
    callbacks.StepTimer.on_train_batch_end = _slow  # type: ignore[method-assign]
    cli.main()
