"""``sop-bench`` with NaN student embeddings injected at step ``$NAN_STEP`` on rank ``$NAN_RANK`` only.

Lets a test check that DDP ranks agree on a non-finite loss seen by one of them
(stop: every rank stops with the message, none hangs; skip: every rank skips).
"""

from __future__ import annotations

import os
from typing import Any

from sop_plugin.bench import cli
from sop_plugin.core import SOPObjective, rank_and_world

_forward = SOPObjective.forward


def _forward_with_nan(self: SOPObjective, student_cls: Any, *args: Any, step: int = 0, **kwargs: Any) -> Any:
    if step == int(os.environ["NAN_STEP"]) and rank_and_world()[0] == int(os.environ.get("NAN_RANK", "0")):
        student_cls = student_cls * float("nan")
    return _forward(self, student_cls, *args, step=step, **kwargs)


if __name__ == "__main__":
    SOPObjective.forward = _forward_with_nan  # type: ignore[method-assign]
    cli.main()
