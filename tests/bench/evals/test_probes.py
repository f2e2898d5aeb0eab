"""Tests for sop_plugin.bench.evals.probes and sop_plugin.bench.evals.corruptions."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sop_plugin.bench.evals.corruptions import CORRUPTIONS, corrupt
from sop_plugin.bench.evals.probes import (
    extract_features,
    knn_top1,
    linear_probe,
    raw_pixel_features,
    retrieval_metrics,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# --- kNN -------------------------------------------------------------------

# Six train points in 2-D (lengths differ on purpose: only directions matter).
TRAIN_X = torch.tensor([[3.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])
TRAIN_Y = torch.tensor([0, 1, 1, 0, 2, 2])
TEST_X = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
TEST_Y = torch.tensor([1, 2])


def test_knn_hand_example_weighting_decides() -> None:
    # Query (1, 0): cosines to the train points are 1, .707, .707, 0, -1, 0.
    # k = 3 neighbours: #0 (class 0, sim 1) and #1, #2 (class 1, sim .707 each).
    #   T = 0.07: class 0 gets exp(1/.07) = e^14.29, class 1 gets 2 e^(.707/.07) = e^10.79
    #             -> predicts 0 (wrong, label 1) although class 1 has the majority.
    #   T = 10:   class 0 gets e^0.1 = 1.105, class 1 gets 2 e^0.0707 = 2.146 -> predicts 1.
    # Query (-1, -1): cosines -.707, -1, 0, -.707, .707, .707 -> neighbours #4, #5 (class 2)
    # and #2 (class 1): class 2 wins at any temperature (label 2, correct).
    assert knn_top1(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, k=3, temperature=0.07) == 50.0
    assert knn_top1(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, k=3, temperature=10.0) == 100.0
    # A tiny temperature would overflow a naive exp(sim / T); the vote must stay finite.
    assert knn_top1(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, k=3, temperature=1e-3) == 50.0


def test_knn_k_larger_than_train_set_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        knn_top1(TRAIN_X, TRAIN_Y, TEST_X, TEST_Y, k=7)


def test_knn_chunking_matches_unchunked_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(200, 8, generator=gen), torch.randn(50, 8, generator=gen)
    train_y, test_y = (torch.randint(0, 4, (200,), generator=gen), torch.randint(0, 4, (50,), generator=gen))
    sim = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    top_sim, top_idx = sim.topk(5, dim=1)
    votes = torch.zeros(50, 4).scatter_add_(1, train_y[top_idx], (top_sim / 0.07).exp())
    expected = 100.0 * (votes.argmax(1) == test_y).float().mean().item()
    got = knn_top1(train_x, train_y, test_x, test_y, k=5, chunk=7)
    assert got == pytest.approx(expected)


# --- retrieval ---------------------------------------------------------------


def _unit_at(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_retrieval_hand_example() -> None:
    # Points on the unit circle at 0, 10, 25, 45, 90 degrees, classes A A B A B.
    # Rank by angle gap (leave-one-out), R = other members of the query's class:
    #   q0 (A, R=2): 1(A) 2(B)           -> AP@R = (1/1)/2 = 0.5,  R@1 = 1
    #   q1 (A, R=2): 0(A) 2(B)           -> AP@R = (1/1)/2 = 0.5,  R@1 = 1
    #   q2 (B, R=1): 1(A)                -> AP@R = 0,              R@1 = 0
    #   q3 (A, R=2): 2(B) 1(A)           -> AP@R = (1/2)/2 = 0.25, R@1 = 0
    #   q4 (B, R=1): 3(A)                -> AP@R = 0,              R@1 = 0
    # mAP@R = (0.5 + 0.5 + 0 + 0.25 + 0) / 5 = 25 %, recall@1 = 2/5 = 40 %.
    x = _unit_at([0, 10, 25, 45, 90])
    y = torch.tensor([0, 0, 1, 0, 1])
    got = retrieval_metrics(x, y, chunk=2)
    assert got["map_at_r"] == pytest.approx(25.0)
    assert got["recall_at_1"] == pytest.approx(40.0)


def test_retrieval_perfect_clusters_and_subsampling() -> None:
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat_interleave(10)
    x = F.one_hot(y, 4).float() * 10 + 0.1 * torch.randn(40, 4, generator=gen)
    assert retrieval_metrics(x, y) == {"map_at_r": 100.0, "recall_at_1": 100.0}
    x_noisy = torch.randn(40, 4, generator=gen)
    full = retrieval_metrics(x_noisy, y)
    assert retrieval_metrics(x_noisy, y, max_queries=100) == full
    part = retrieval_metrics(x_noisy, y, max_queries=15, seed=3)
    assert part == retrieval_metrics(x_noisy, y, max_queries=15, seed=3)
    assert 0.0 <= part["map_at_r"] <= 100.0


# --- linear probe -------------------------------------------------------------


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]]).repeat(1, 8)  # 16-D
    y = torch.randint(0, 3, (n,), generator=gen)
    return centres[y] + torch.randn(n, 16, generator=gen), y


def test_linear_probe_separable_and_deterministic() -> None:
    train_x, train_y = _blobs(600, 0)
    test_x, test_y = _blobs(300, 1)
    assert linear_probe(train_x, train_y, test_x, test_y, epochs=2, batch_size=200) >= 99.0
    # Random labels keep accuracy off 100 %, so equal results mean equal training runs.
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 16, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    runs = [linear_probe(x, y, x, y, epochs=2, batch_size=50, seed=s) for s in (7, 7)]
    assert runs[0] == runs[1] < 100.0


# --- features ---------------------------------------------------------------


def test_raw_pixel_and_extract_features() -> None:
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    flat = raw_pixel_features(images)
    assert flat.shape == (10, 16) and flat.dtype == torch.float32
    assert torch.allclose(flat[3], images[3].flatten().float() / 255)
    feats = extract_features(lambda x: x.mean(dim=(2, 3)) * 2, images, batch_size=3)
    assert feats.shape == (10, 1)
    assert torch.allclose(feats[:, 0], flat.mean(dim=1) * 2)


# --- corruptions ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_keep_format_and_are_deterministic(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(30, 226, (4, 3, 16, 16), dtype=torch.uint8, generator=gen)
    out = corrupt(images, name, seed=5)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not torch.equal(out, images)
    assert torch.equal(out, corrupt(images, name, seed=5))


def test_unknown_corruption() -> None:
    with pytest.raises(KeyError, match="unknown corruption"):
        corrupt(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "fog", seed=0)


# --- real data (optional) -------------------------------------------------------


def _read_idx(path: Path) -> torch.Tensor:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return torch.from_numpy(array.copy())


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST files not installed")
def test_raw_pixel_knn_on_fashion_mnist_subset() -> None:
    # Full 60k train set, first 1,000 test images (~2.5 s on 2 cores). The full
    # 10k test set gives 84.59 % with this weighted kNN (84.07 % with plain
    # majority votes, the usual 84.1 %); this subset gives 85.5 %.
    train = raw_pixel_features(_read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")[:, None])
    train_y = _read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz")
    test = raw_pixel_features(_read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")[:1000, None])
    test_y = _read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")[:1000]
    assert knn_top1(train, train_y, test, test_y, k=20) == pytest.approx(85.5, abs=0.25)
