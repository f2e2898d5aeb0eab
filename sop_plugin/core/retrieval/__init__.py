"""Exact cosine k-NN search of support embeddings, behind one interface (``registry``).

Importing this package registers the backends: ``torch`` (chunked matmul + topk, CPU or GPU),
``faiss`` (flat inner product; GPU brute force with faiss-gpu) and ``auto`` (the fastest of the
exact ones, measured per search shape). docs/performance.md says why no others are kept.
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
