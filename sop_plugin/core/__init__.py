"""Host-agnostic SOP: memories, retrieval, SOP construction, assignment, losses, masking, head.

Depends on torch (and optionally faiss) only; no Lightning, hydra or solo-learn.
"""

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.encoder import MaskedEncoder, build_vit
from sop_plugin.core.head import SOPHead
from sop_plugin.core.losses import koleo_loss, sop_global_loss, sop_mim_loss
from sop_plugin.core.masking import BlockMaskGenerator
from sop_plugin.core.memory import SupportMemory, gather_across_ranks
from sop_plugin.core.momentum import ema_update
from sop_plugin.core.objective import SOPConfig, SOPLossOutput, SOPObjective, assign_batched
from sop_plugin.core.retrieval import (
    RETRIEVAL_BACKENDS,
    Retrieval,
    get_retrieval,
    register_retrieval,
)
from sop_plugin.core.schedules import cosine_schedule, linear_warmup, warmup_cosine
from sop_plugin.core.sops import SOPSet, assign, build_sops, sample_anchors, vote_matrix

__all__ = [
    "ANCHOR_SELECTORS",
    "BlockMaskGenerator",
    "RETRIEVAL_BACKENDS",
    "Retrieval",
    "MaskedEncoder",
    "SOPConfig",
    "SOPHead",
    "SOPLossOutput",
    "SOPObjective",
    "SOPSet",
    "SupportMemory",
    "assign",
    "assign_batched",
    "build_sops",
    "build_vit",
    "cosine_schedule",
    "ema_update",
    "gather_across_ranks",
    "get_retrieval",
    "koleo_loss",
    "linear_warmup",
    "register_retrieval",
    "sample_anchors",
    "sop_global_loss",
    "sop_mim_loss",
    "vote_matrix",
    "warmup_cosine",
]
