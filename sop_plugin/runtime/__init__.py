"""What both Lightning hosts (the benchmark and the solo-learn binding) share.

Checkpoint files (atomic writes, safe reads), global RNG states in checkpoints, the
non-finite loss guard and its explanation of a SOP step, device counting and the rank-0 test, the
student's block masks, the weighted kNN vote (:mod:`~sop_plugin.runtime.knn`) and the line an
interrupted run prints (:mod:`~sop_plugin.runtime.resume_message`). Kept out of ``sop_plugin.core``
(which stays free of Lightning) and out of either host, so that neither host imports the other.
"""

from sop_plugin.runtime.checkpoint import CheckpointError, UnsafeCheckpointWarning, load_checkpoint
from sop_plugin.runtime.checkpoint_io import AtomicCheckpointIO
from sop_plugin.runtime.clipping import clip_per_parameter
from sop_plugin.runtime.devices import is_rank_zero, num_devices, world_size
from sop_plugin.runtime.explain import explain_nonfinite
from sop_plugin.runtime.masking import BlockMaskGenerator
from sop_plugin.runtime.nonfinite import POLICIES, NonFiniteGuard, NonFiniteLossError
from sop_plugin.runtime.rng_state import RNGStateCheckpoint

__all__ = [
    "POLICIES",
    "AtomicCheckpointIO",
    "BlockMaskGenerator",
    "CheckpointError",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "UnsafeCheckpointWarning",
    "clip_per_parameter",
    "explain_nonfinite",
    "is_rank_zero",
    "load_checkpoint",
    "num_devices",
    "world_size",
]
