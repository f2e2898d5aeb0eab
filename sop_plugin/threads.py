"""Thread settings of the command-line tools, so that a run does not collapse on a shared CPU.

torch's intra-op thread pool is OpenMP (libgomp), whose threads by default *spin* while
waiting for the next parallel region. When another CPU-bound process shares the cores,
the spinning threads take the CPU time the working thread needs, and a step that takes
0.25 s on an idle 2-core machine can take seconds (measured: docs/performance.md).
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead. libgomp reads the
variable once, when torch is loaded, so it has to be set before ``import torch``.

Importing this module changes nothing: the console scripts (:mod:`sop_plugin.launchers`)
call :func:`prefer_passive_wait` before they import anything that loads torch. The thread
count stays torch's default (one per core); ``threads=N`` (``sop-bench``, ``sop-perf``) or
``OMP_NUM_THREADS`` override it.
"""

from __future__ import annotations

import os
import sys

#: the policy the tools use unless ``OMP_WAIT_POLICY`` is set
WAIT_POLICY = "PASSIVE"


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` if nothing set a policy and torch is not loaded yet; True when set.

    The environment wins (a policy already set is kept), and once torch is loaded nothing is
    set, as it could no longer take effect.
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True
