"""Collapse diagnostics: how spread a set of embeddings is, and how sharp a teacher's distribution is.

Pure torch, no Lightning (the per-epoch callback is :class:`sop_plugin.bench.train.callbacks.CollapseMonitor`;
``sop_plugin/bench/results/memory_spread.py`` reads a checkpoint with these functions). Definitions
(docs/evaluation.md, "Collapse diagnostics"), for rows ``x`` [N, d] L2-normalised first:

* effective rank: ``exp(H(p))`` with ``p = s / sum(s)`` the normalised singular values of the
  normalised rows, not centred (Roy & Vetterli 2007): d for rows spread evenly over d dimensions,
  1 for identical rows;
* mean pairwise cosine: the mean of ``x_i . x_j`` over distinct pairs ``i != j``;
* k-NN cosine: the mean over rows of the mean cosine of a row to its ``k`` nearest other rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sop_plugin.core import build_sop_sets, get_retrieval, sample_anchors

#: statistic -> what it measures; every embedding set gets these three (``<set>_<stat>``)
SPREAD_STATS: dict[str, str] = {
    "erank": "effective rank",
    "mean_cos": "mean pairwise cosine",
    "knn_cos": "mean k-NN cosine",
}


def normalize_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` [N, d] scaled to unit length, in float64 (zero rows stay zero)."""
    if x.ndim != 2:
        raise ValueError(f"expected a matrix [N, d], got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def effective_rank(x: Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007) of the L2-normalised rows of ``x`` [N, d], not centred.

    The singular values come from the d x d Gram matrix (cheap for N >> d), in float64.
    """
    z = normalize_rows(x)
    if z.shape[0] == 0:
        return float("nan")
    gram = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()
    total = s.sum()
    if total <= 0:
        return float("nan")
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_pairwise_cosine(x: Tensor) -> float:
    """Mean cosine over the N(N-1) ordered pairs of distinct rows of ``x`` [N, d] (NaN below 2 rows).

    ``(|sum_i z_i|^2 - sum_i |z_i|^2) / (N (N - 1))``: O(N d), no N x N matrix.
    """
    z = normalize_rows(x)
    n = z.shape[0]
    if n < 2:
        return float("nan")
    total = z.sum(dim=0)
    return float((total @ total - (z * z).sum()) / (n * (n - 1)))


def knn_cosine(x: Tensor, k: int = 8, chunk_elements: int = 1 << 24) -> float:
    """Mean over rows of ``x`` [N, d] of the mean cosine to its ``k`` nearest other rows.

    ``k`` is capped at N - 1 (NaN below 2 rows). Rows are compared in chunks of at most
    ``chunk_elements`` similarities, so a 65,536-row memory needs no N x N matrix.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    z = normalize_rows(x).to(torch.float32)
    n = z.shape[0]
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    rows = max(1, chunk_elements // n)
    total = 0.0
    for start in range(0, n, rows):
        sims = z[start : start + rows] @ z.T
        idx = torch.arange(sims.shape[0], device=sims.device)
        sims[idx, idx + start] = -float("inf")  # not its own neighbour
        total += float(sims.topk(k, dim=1).values.to(torch.float64).mean(dim=1).sum())
    return total / n


def spread(x: Tensor, k: int = 8) -> dict[str, float]:
    """The three statistics of :data:`SPREAD_STATS` of the rows of ``x`` [N, d]."""
    return {"erank": effective_rank(x), "mean_cos": mean_pairwise_cosine(x), "knn_cos": knn_cosine(x, k)}


def distribution_stats(probs: Tensor) -> dict[str, float]:
    """Sharpness of a teacher's distributions ``probs`` [N, K] (rows sum to 1).

    ``max_prob``: mean over rows of the largest probability; ``entropy``: mean per-row entropy
    divided by log K (1: uniform, 0: one-hot); ``usage_entropy``: entropy of the mean row over
    log K (low when every row picks the same few outputs: the collapse centering fights).
    """
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"expected probabilities [N, K >= 2], got shape {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64)
    log_k = math.log(p.shape[1])

    def entropy(q: Tensor) -> Tensor:
        return -(q * q.clamp_min(1e-30).log()).sum(dim=-1)

    return {
        "max_prob": float(p.max(dim=1).values.mean()),
        "entropy": float(entropy(p).mean() / log_k),
        "usage_entropy": float(entropy(p.mean(dim=0)) / log_k),
    }


def se_anchor_cosine(supports: Tensor, num_sops: int) -> float:
    """Mean cosine of every support embedding (SE) to its anchor.

    ``supports`` [P(k+1), d] or [T, P(k+1), d], rows grouped per SOP (anchor, then its k SEs), as
    :class:`sop_plugin.core.SOPSet.supports` holds them. The raw cosine, not the clamped weight.
    """
    sup = supports.detach().to(torch.float64)
    if sup.ndim == 2:
        sup = sup[None]
    t, r, d = sup.shape
    if r % num_sops or r // num_sops < 2:
        raise ValueError(f"{r} support rows are not {num_sops} SOPs of an anchor and at least one SE")
    z = torch.nn.functional.normalize(sup, dim=-1).view(t, num_sops, r // num_sops, d)
    return float((z[:, :, 1:] * z[:, :, :1]).sum(-1).mean())


def filled_rows(bank: Tensor, ids: Tensor | None) -> Tensor:
    """Rows of a memory ``bank`` [K, d] that hold real embeddings (``ids >= 0``); all rows without ids."""
    if ids is None:
        return bank
    if ids.shape[0] != bank.shape[0]:
        raise ValueError(f"{ids.shape[0]} row ids for a memory of {bank.shape[0]} rows")
    return bank[ids.to(bank.device) >= 0]


def prefixed(stats: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{"erank": v}`` -> ``{"<prefix>_erank": v}``."""
    return {f"{prefix}_{k}": v for k, v in stats.items()}


# ---------------------------------------------------------------------- a benchmark module, measured
def sop_se_cosine(objective: Any, seed: int = 0) -> float:
    """Mean SE-to-anchor cosine of SOP sets drawn afresh from a :class:`SOPObjective`'s class memory.

    Drawn as training draws them (T sets of P uniform anchors from the whole memory, k SEs each),
    from a generator fixed by ``seed`` (the same anchor rows every time; no global RNG touched),
    with the exact ``torch`` search (rank-0-only code must not join ``auto``'s collectives).
    NaN without SEs (``class_num_supports=0``).
    """
    c = objective.cfg
    bank = objective.class_memory.bank
    if c.class_num_supports < 1:
        return float("nan")
    gen = torch.Generator().manual_seed(int(seed))
    anchors = sample_anchors(bank.shape[0], c.class_num_anchors, c.class_num_sets, gen, bank.device)
    sets = build_sop_sets(bank, anchors, c.class_num_supports, c.smoothing, get_retrieval("torch"))
    return se_anchor_cosine(sets.supports, sets.num_sops)


@torch.no_grad()
def measure_module(
    module: Any, images: Tensor, step: int, k: int = 8, seed: int = 0, max_memory_rows: int = 16384
) -> dict[str, float]:
    """Every collapse statistic of a module's teacher on ``images``.

    ``module``: a :class:`~sop_plugin.bench.train.module.BenchModule`.
    ``images``: uint8 probe images [N, C, H, W] (the eval transform is the module's). Keys:
    ``backbone_*`` / ``head_*`` (:data:`SPREAD_STATS` of the teacher backbone's [CLS] features and of
    ``objective.teacher_embedding``), ``teacher_*`` (:func:`distribution_stats` of
    ``objective.teacher_distribution`` at ``step``); for SOP also ``sop_se_cos``
    (:func:`sop_se_cosine`), ``memory_*`` (the class memory's filled rows; a subset of
    ``max_memory_rows`` fixed by ``seed`` when there are more, so a 65,536-row memory costs no more
    than a 16,384-row one) and ``memory_filled`` (the number of filled rows).
    """
    feats = module.features(images)  # teacher backbone [CLS], float32 on CPU
    obj = module.objective
    cls = feats.to(module.device)
    head = torch.cat([obj.teacher_embedding(part) for part in cls.split(1024)]).float().cpu()
    stats = {**prefixed(spread(feats, k), "backbone"), **prefixed(spread(head, k), "head")}
    core = getattr(obj, "objective", None)
    probs = obj.teacher_distribution(cls, step).float().cpu()  # SOP: exact search, no collective
    stats.update(prefixed(distribution_stats(probs), "teacher"))
    if core is not None and hasattr(core, "class_memory"):  # SOP: the class memory and its SOPs
        rows = filled_rows(core.class_memory.bank, getattr(obj, "class_ids", None)).float()
        stats["memory_filled"] = float(rows.shape[0])
        if rows.shape[0] > max_memory_rows:
            keep = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(int(seed)))[
                :max_memory_rows
            ]
            rows = rows[keep.to(rows.device)]
        stats.update(prefixed(spread(rows, k), "memory"))
        stats["sop_se_cos"] = sop_se_cosine(core, seed)
    return stats


def summarize_history(history: list[dict[str, float | None]], probe_images: int, k: int) -> dict[str, Any]:
    """``results.json``'s ``methods.<m>.collapse``: the last measurement (``final``) and all of them.

    ``{"probe_images": N, "knn_k": k, "final": {stat: value | None}, "history": [{"epoch", "step",
    stat: value | None}, ...]}`` (None: not defined, e.g. an empty class memory). The measurements'
    ``seconds`` stay out (they are in ``metrics.csv``), so a resumed run's results equal a straight run's.
    """
    kept = [{key: v for key, v in h.items() if key != "seconds"} for h in history]
    final = {key: v for key, v in (kept[-1] if kept else {}).items() if key not in ("epoch", "step")}
    return {"probe_images": int(probe_images), "knn_k": int(k), "final": final, "history": kept}


#: the statistics of a measurement, in report / plot order, with their labels (``k`` in the k-NN ones)
STAT_LABELS: dict[str, str] = {
    "head_erank": "head eff. rank",
    "head_mean_cos": "head mean cos",
    "head_knn_cos": "head {k}-NN cos",
    "backbone_erank": "backbone eff. rank",
    "backbone_mean_cos": "backbone mean cos",
    "backbone_knn_cos": "backbone {k}-NN cos",
    "teacher_max_prob": "teacher max-prob",
    "teacher_entropy": "teacher entropy / log K",
    "teacher_usage_entropy": "teacher usage entropy / log K",
    "sop_se_cos": "SE-anchor cos",
    "memory_erank": "class memory eff. rank",
    "memory_mean_cos": "class memory mean cos",
    "memory_knn_cos": "class memory {k}-NN cos",
}


def stat_label(key: str, k: int = 8) -> str:
    """Human label of a statistic (its key when unknown)."""
    return STAT_LABELS.get(key, key).format(k=k)
