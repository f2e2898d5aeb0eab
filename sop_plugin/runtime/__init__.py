"""What both Lightning hosts (the benchmark and the solo-learn binding) share.

Checkpoint files (atomic writes, safe reads), global RNG states in checkpoints, the
non-finite loss guard and its explanation of a SOP step, device counting and the student's block masks. Kept out of ``sop_plugin.core`` (which stays
free of Lightning) and out of either host, so that neither host imports the other.
"""

from sop_plugin.runtime.checkpoint import CheckpointError, UnsafeCheckpointWarning, load_checkpoint
from sop_plugin.runtime.checkpoint_io import AtomicCheckpointIO
from sop_plugin.runtime.devices import num_devices, world_size
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
    "explain_nonfinite",
    "load_checkpoint",
    "num_devices",
    "world_size",
]
