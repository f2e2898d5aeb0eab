"""Frozen-feature evaluation: weighted kNN, linear probe, retrieval, feature extraction.

Everything here is plain torch on whatever device the inputs live on, so the same
code serves the per-epoch kNN monitor, the final evaluation and offline checks.
Similarity matrices are built in row chunks so that a 60k x 10k problem never
holds more than about ``SIM_BUDGET_BYTES`` of similarities at once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from sop_plugin.runtime.knn import knn_votes

SIM_BUDGET_BYTES = 256 * 1024 * 1024
"""Upper bound for one chunk of a float32 similarity matrix."""


def _rows_per_chunk(chunk: int, n_cols: int) -> int:
    """Rows of an ``[rows, n_cols]`` float32 block that fit the budget (at most ``chunk``)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return max(1, min(chunk, SIM_BUDGET_BYTES // (4 * max(n_cols, 1))))


def _check_features(x: Tensor, y: Tensor, name: str) -> None:
    """Shape checks shared by all metrics: 2-D features, 1-D labels of equal length."""
    if x.dim() != 2:
        raise ValueError(f"{name}_x must be 2-D [N, D], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_y must be 1-D with {x.shape[0]} labels, got shape {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}_x is empty")


def _num_classes(num_classes: int | None, *labels: Tensor) -> int:
    """Class count: the given one (checked against the labels) or max label + 1."""
    top = max(int(lab.max()) for lab in labels)
    low = min(int(lab.min()) for lab in labels)
    if low < 0:
        raise ValueError(f"labels must be non-negative, found {low}")
    if num_classes is None:
        return top + 1
    if top >= num_classes:
        raise ValueError(f"label {top} does not fit num_classes={num_classes}")
    return num_classes


@torch.no_grad()
def knn_top1(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (percent) of the temperature-weighted cosine kNN classifier.

    Each test sample takes its ``k`` most cosine-similar train samples; each
    neighbour votes for its class with weight ``exp(sim / temperature)`` (the
    InstDisc/DINO protocol, :func:`~sop_plugin.runtime.knn.knn_votes`) and the
    class with the largest total wins. Ties go to the lowest class index. Runs
    on ``train_x.device``.
    """
    _check_features(train_x, train_y, "train")
    _check_features(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"feature dims differ: train {train_x.shape[1]}, test {test_x.shape[1]}")
    n_train = train_x.shape[0]
    if not 1 <= k <= n_train:
        raise ValueError(f"k must be in [1, {n_train}] (the train set size), got k={k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    device = train_x.device
    train = F.normalize(train_x.float(), dim=1)
    train_labels = train_y.to(device).long()
    test_labels = test_y.to(device).long()
    n_classes = _num_classes(num_classes, train_labels, test_labels)
    rows = _rows_per_chunk(chunk, n_train)

    correct = 0
    for start in range(0, test_x.shape[0], rows):
        query = F.normalize(test_x[start : start + rows].to(device).float(), dim=1)
        top_sim, top_idx = (query @ train.T).topk(k, dim=1)
        votes = knn_votes(top_sim, train_labels[top_idx], temperature, n_classes)
        correct += int((votes.argmax(dim=1) == test_labels[start : start + rows]).sum())
    return 100.0 * correct / test_x.shape[0]


def _standardise(train_x: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
    """Standardise both sets with the train mean/std (constant dims get std 1)."""
    mean = train_x.mean(dim=0, keepdim=True)
    std = train_x.std(dim=0, keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train_x - mean) / std, (other - mean) / std


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 1024,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy (percent) of a logistic-regression probe on frozen features.

    Features are standardised with the train-set mean/std. The probe is one
    linear layer, zero-initialised (the problem is convex, so no random init is
    needed), trained with AdamW on shuffled mini-batches and a per-step cosine
    learning-rate decay to zero. The only randomness is the shuffle order,
    drawn from a CPU generator seeded with ``seed``, so results repeat exactly
    on a given device. Mini-batch AdamW was chosen over full-batch LBFGS to
    bound memory on large feature sets. Runs on ``train_x.device``.
    """
    _check_features(train_x, train_y, "train")
    _check_features(test_x, test_y, "test")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    device = train_x.device
    train_labels = train_y.to(device).long()
    test_labels = test_y.to(device).long()
    n_classes = _num_classes(num_classes, train_labels, test_labels)
    train, test = _standardise(train_x.float(), test_x.to(device).float())

    probe = torch.nn.Linear(train.shape[1], n_classes).to(device)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    )
    generator = torch.Generator().manual_seed(seed)

    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(probe(train[idx]), train_labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()

    with torch.no_grad():
        correct = 0
        for start in range(0, test.shape[0], 8192):
            pred = probe(test[start : start + 8192]).argmax(dim=1)
            correct += int((pred == test_labels[start : start + 8192]).sum())
    return 100.0 * correct / test.shape[0]


@torch.no_grad()
def retrieval_metrics(
    x: Tensor, y: Tensor, chunk: int = 1024, max_queries: int | None = None, seed: int = 0
) -> dict[str, float]:
    """Leave-one-out retrieval on one set: ``{"map_at_r", "recall_at_1"}`` in percent.

    Every sample (or a seeded random subset of ``max_queries`` samples) queries
    all other samples of ``x`` by cosine similarity; relevant means same label.
    mAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020): with R the
    number of other samples sharing the query's label, AP@R is the sum of
    precision@i over the relevant positions i <= R, divided by R. Recall@1 is
    whether the nearest other sample is relevant. Queries whose class has no
    other member (R = 0) are left out of both averages. Ties among equal
    similarities are ordered as ``torch.topk`` returns them.
    """
    _check_features(x, y, "retrieval")
    n = x.shape[0]
    if n < 2:
        raise ValueError("retrieval needs at least 2 samples")
    device = x.device
    feats = F.normalize(x.float(), dim=1)
    labels = y.to(device).long()
    class_sizes = torch.bincount(labels)
    r_all = class_sizes[labels] - 1  # other items with the query's class

    queries = torch.arange(n, device=device)
    if max_queries is not None and max_queries < n:
        generator = torch.Generator().manual_seed(seed)
        queries = torch.randperm(n, generator=generator)[:max_queries].sort().values.to(device)
    queries = queries[r_all[queries] > 0]
    if queries.numel() == 0:
        raise ValueError("no query has another sample of its class")

    ap_sum = 0.0
    hit_sum = 0.0
    rows = _rows_per_chunk(chunk, n)
    for start in range(0, queries.numel(), rows):
        q = queries[start : start + rows]
        sim = feats[q] @ feats.T
        sim[torch.arange(q.numel(), device=device), q] = -math.inf  # leave the query out
        r = r_all[q]
        depth = int(r.max())
        top_idx = sim.topk(depth, dim=1).indices
        relevant = (labels[top_idx] == labels[q, None]).float()
        relevant *= torch.arange(depth, device=device)[None, :] < r[:, None]
        ranks = torch.arange(1, depth + 1, device=device, dtype=torch.float32)
        precision = relevant.cumsum(dim=1) / ranks
        ap_sum += float(((precision * relevant).sum(dim=1) / r.float()).sum())
        hit_sum += float(relevant[:, 0].sum())
    n_q = queries.numel()
    return {"map_at_r": 100.0 * ap_sum / n_q, "recall_at_1": 100.0 * hit_sum / n_q}


def raw_pixel_features(images_uint8: Tensor) -> Tensor:
    """Flatten ``[N, C, H, W]`` uint8 images to ``[N, C*H*W]`` float32 in [0, 1].

    The raw-pixel baseline: kNN on these gives the floor a learned encoder
    should clear (cosine similarity ignores the 1/255 scale).
    """
    if images_uint8.dim() != 4:
        raise ValueError(f"expected [N, C, H, W] images, got shape {tuple(images_uint8.shape)}")
    return images_uint8.reshape(images_uint8.shape[0], -1).float().div_(255.0)


def _default_transform(batch: Tensor) -> Tensor:
    """uint8 -> float32 in [0, 1]."""
    return batch.float().div_(255.0)


@torch.no_grad()
def extract_features(
    encode_fn: Callable[[Tensor], Tensor],
    images_uint8: Tensor,
    transform: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run ``encode_fn(transform(batch))`` over the images; return float32 features on CPU.

    Batches are moved to ``device`` (default: the images' device) before the
    transform. ``transform`` maps a uint8 batch to the encoder's input (default:
    scale to [0, 1]). Putting the encoder in eval mode is the caller's job.
    Features are gathered on CPU so large sets do not pile up in GPU memory.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else images_uint8.device
    transform = transform or _default_transform
    outputs: list[Tensor] = []
    starts = range(0, images_uint8.shape[0], batch_size)
    for start in tqdm(starts, desc="features", leave=False, disable=not sys.stderr.isatty()):
        batch = images_uint8[start : start + batch_size].to(device, non_blocking=True)
        feats = encode_fn(transform(batch))
        outputs.append(feats.reshape(feats.shape[0], -1).float().cpu())
    if not outputs:
        raise ValueError("no images to encode")
    return torch.cat(outputs)
