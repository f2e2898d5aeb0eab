"""Exact cosine k-NN search of support embeddings, behind one interface (``registry``).

Importing this package registers the backends ``torch``, ``faiss`` and ``auto`` (docs/performance.md).
"""

from sop_plugin.core.retrieval import auto, faiss_backend, torch_backend  # noqa: F401  (register)
from sop_plugin.core.retrieval.auto import AutoRetrieval, lockstep
from sop_plugin.core.retrieval.registry import (
    RETRIEVAL_BACKENDS,
    Retrieval,
    get_retrieval,
    register_retrieval,
    search_sets,
)

__all__ = [
    "RETRIEVAL_BACKENDS",
    "AutoRetrieval",
    "Retrieval",
    "get_retrieval",
    "lockstep",
    "register_retrieval",
    "search_sets",
]
