"""``sop-solo-pretrain`` slowed to ~0.2 s per step, so a test can signal it mid-epoch.

Usage: ``python slow_solo.py <sop-solo-pretrain arguments>`` (``SOP_TEST_LAUNCHER=linear``:
``sop-solo-linear``). The only change to the real launcher is one more callback: after every
step it writes the steps done so far to ``$SOP_TEST_PROGRESS`` and sleeps 0.2 s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from sop_plugin.solo import attach, launch

PROGRESS = os.environ.get("SOP_TEST_PROGRESS")
_make_callbacks = attach.plugin_callbacks


class Slow(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if PROGRESS:
            tmp = Path(f"{PROGRESS}.tmp")
            tmp.write_text(str(int(trainer.global_step)))
            tmp.replace(PROGRESS)
        time.sleep(0.2)


def _plugin_callbacks(*args: Any, **kwargs: Any) -> list[Any]:
    return [*_make_callbacks(*args, **kwargs), Slow()]


if __name__ == "__main__":
    attach.plugin_callbacks = _plugin_callbacks
    if os.environ.get("SOP_TEST_LAUNCHER") == "linear":
        launch.linear_main()
    else:
        launch.pretrain_main()
