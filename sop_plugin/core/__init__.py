"""Host-agnostic SOP: config, memories, retrieval, SOP sets and assignment, losses, head and objective.

Imports torch only (and faiss inside ``retrieval``); no Lightning, hydra, lightly, timm or solo-learn.
"""

from sop_plugin.core.config import SOPConfig
from sop_plugin.core.distributed import gather_across_ranks, rank_and_world
from sop_plugin.core.head import SOPHead
from sop_plugin.core.losses import sop_global_loss, sop_mim_loss
from sop_plugin.core.memory import SupportMemory
from sop_plugin.core.objective import SOPLossOutput, SOPObjective
from sop_plugin.core.retrieval import get_retrieval
from sop_plugin.core.schedules import cosine_schedule, linear_warmup, warmup_cosine
from sop_plugin.core.seeding import mix_seed, seeded_generator
from sop_plugin.core.sops import SOPSet, assign, build_sop_sets, build_sops, sample_anchors
from sop_plugin.core.timing import NULL_TIMER, PhaseTimer

__all__ = [
    "NULL_TIMER",
    "PhaseTimer",
    "SOPConfig",
    "SOPHead",
    "SOPLossOutput",
    "SOPObjective",
    "SOPSet",
    "SupportMemory",
    "assign",
    "build_sop_sets",
    "build_sops",
    "cosine_schedule",
    "gather_across_ranks",
    "get_retrieval",
    "linear_warmup",
    "mix_seed",
    "rank_and_world",
    "sample_anchors",
    "seeded_generator",
    "sop_global_loss",
    "sop_mim_loss",
    "warmup_cosine",
]
