"""The temperature-weighted kNN vote both hosts score with (the benchmark's kNN, solo's clean kNN).

How the neighbours are found stays with the caller (chunked matmul in the benchmark, FAISS in
the solo-learn binding); what they vote is decided here, once, so both report the same metric.
"""

from __future__ import annotations

import torch
from torch import Tensor


def knn_votes(top_sim: Tensor, top_labels: Tensor, temperature: float, num_classes: int) -> Tensor:
    """Class scores ``[Q, num_classes]`` of the ``exp(sim / T)``-weighted vote of each query's neighbours.

    ``top_sim`` ``[Q, k]``: cosine similarities of each query's k nearest neighbours, nearest first;
    ``top_labels`` ``[Q, k]``: their classes. Weights are ``exp((sim - max_sim) / T)``: one common
    factor per row (the same winner as ``exp(sim / T)``) that cannot overflow for small ``T``. The
    scores live on ``top_sim``'s device.
    """
    weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
    votes = torch.zeros(top_sim.shape[0], num_classes, device=top_sim.device)
    return votes.scatter_add_(1, top_labels.long(), weights.float())
