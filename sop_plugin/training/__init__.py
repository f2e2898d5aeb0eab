"""Lightning pieces shared by both hosts (the benchmark and the solo-learn binding).

Kept out of ``sop_plugin.core`` (which stays free of Lightning) and out of either host,
so that neither host imports the other.
"""

from sop_plugin.training.checkpoint_io import AtomicCheckpointIO
from sop_plugin.training.rng_state import RNGStateCheckpoint

__all__ = ["AtomicCheckpointIO", "RNGStateCheckpoint"]
