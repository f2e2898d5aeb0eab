"""build_sops / assign against the naive float64 reference, plus invariants."""

import pytest
import torch

from sop_plugin.core import SOPSet, assign, build_sops, get_retrieval, sample_anchors
from tests.core.reference import ref_assign, ref_build


def unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize("p", [2, 16, 64])
@pytest.mark.parametrize("k", [0, 1, 8])
def test_build_and_assign_match_reference(p: int, k: int) -> None:
    memory = unit(300, 256, seed=p * 10 + k)
    anchor_idx = sample_anchors(300, p, generator=torch.Generator().manual_seed(1))[0]
    sops = build_sops(memory, anchor_idx, k, smoothing=0.1)
    d_ref, y_ref = ref_build(memory, anchor_idx.tolist(), k, 0.1)
    assert sops.supports.shape == (p * (k + 1), 256)
    assert sops.votes.shape == (p * (k + 1), p)
    torch.testing.assert_close(sops.supports, d_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(sops.votes, y_ref, atol=1e-5, rtol=0)
    z = unit(7, 256, seed=99)
    for tau in (0.1, 0.04):
        torch.testing.assert_close(assign(z, sops, tau), ref_assign(z, d_ref, y_ref, tau), atol=1e-5, rtol=0)


def test_float32_matches_float64_reference() -> None:
    memory = unit(200, 256, seed=3)
    anchor_idx = sample_anchors(200, 16, generator=torch.Generator().manual_seed(2))[0]
    sops = build_sops(memory.float(), anchor_idx, 8, 0.1)
    d_ref, y_ref = ref_build(memory, anchor_idx.tolist(), 8, 0.1)
    z = unit(5, 256, seed=4)
    got = assign(z.float(), sops, 0.1).double()
    torch.testing.assert_close(got, ref_assign(z, d_ref, y_ref, 0.1), atol=1e-5, rtol=0)


def test_probabilities_are_distributions() -> None:
    memory = unit(500, 32, seed=5, dtype=torch.float32)
    sops = build_sops(memory, torch.arange(0, 100, 5), 4, 0.1)
    probs = assign(unit(50, 32, seed=6, dtype=torch.float32), sops, 0.05)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(50), atol=1e-5, rtol=0)
    torch.testing.assert_close(sops.votes.sum(1), torch.ones(sops.votes.shape[0]), atol=1e-6, rtol=0)


def test_anchors_never_among_their_supports() -> None:
    memory = unit(64, 8, seed=7, dtype=torch.float32)
    # duplicate rows make anchors each other's nearest neighbours: they must still be excluded
    memory[10:20] = memory[0]
    anchor_idx = torch.arange(0, 20, 2)
    sops = build_sops(memory, anchor_idx, 5, 0.1)
    k = sops.num_supports
    se_rows = sops.memory_index.view(-1, k + 1)[:, 1:]
    assert not torch.isin(se_rows, anchor_idx).any()
    assert torch.equal(sops.memory_index.view(-1, k + 1)[:, 0], anchor_idx)


def test_weights_are_clamped_similarities_and_owner_layout() -> None:
    memory = unit(100, 16, seed=8, dtype=torch.float32)
    anchor_idx = torch.tensor([3, 40, 77])
    sops = build_sops(memory, anchor_idx, 4, 0.2)
    w = sops.weights.view(3, 5)
    assert torch.allclose(w[:, 0], torch.full((3,), 0.8))
    assert ((w[:, 1:] >= 0) & (w[:, 1:] <= 1)).all()
    assert torch.equal(sops.owner, torch.arange(3).repeat_interleave(5))
    sims = (memory[anchor_idx][:, None, :] * memory[sops.memory_index.view(3, 5)[:, 1:]]).sum(-1)
    torch.testing.assert_close(w[:, 1:], sims.clamp(0, 1))
    # SEs sorted by similarity, best first
    assert (sims[:, :-1] >= sims[:, 1:] - 1e-6).all()


def test_k0_gives_anchor_only_sets() -> None:
    memory = unit(50, 8, seed=9, dtype=torch.float32)
    sops = build_sops(memory, torch.tensor([1, 2, 3]), 0, 0.1)
    assert sops.supports.shape == (3, 8) and sops.num_supports == 0
    expected = torch.full((3, 3), 0.05)
    expected.fill_diagonal_(0.9)
    torch.testing.assert_close(sops.votes, expected)


def test_p2_works() -> None:
    memory = unit(20, 4, seed=10, dtype=torch.float32)
    sops = build_sops(memory, torch.tensor([0, 1]), 3, 0.1)
    probs = assign(memory[5:9], sops, 0.1)
    assert probs.shape == (4, 2)


def test_deterministic_given_anchors() -> None:
    memory = unit(400, 32, seed=11, dtype=torch.float32)
    a = torch.tensor([5, 17, 200, 399])
    s1, s2 = build_sops(memory, a, 6, 0.1), build_sops(memory, a, 6, 0.1)
    assert torch.equal(s1.supports, s2.supports) and torch.equal(s1.votes, s2.votes)


def test_faiss_backend_builds_the_same_sets() -> None:
    memory = unit(1000, 64, seed=12, dtype=torch.float32)
    a = sample_anchors(1000, 32, generator=torch.Generator().manual_seed(0))[0]
    s_torch = build_sops(memory, a, 8, 0.1, get_retrieval("torch"))
    s_faiss = build_sops(memory, a, 8, 0.1, get_retrieval("faiss"))
    assert torch.equal(s_torch.memory_index, s_faiss.memory_index)
    torch.testing.assert_close(s_torch.votes, s_faiss.votes, atol=1e-5, rtol=0)


def test_no_gradient_reaches_memory() -> None:
    memory = unit(100, 16, seed=13, dtype=torch.float32).requires_grad_()
    sops = build_sops(memory, torch.tensor([0, 5, 9]), 3, 0.1)
    assert not sops.supports.requires_grad and not sops.votes.requires_grad
    z = unit(4, 16, seed=14, dtype=torch.float32).requires_grad_()
    assign(z, sops, 0.1).sum().backward()
    assert memory.grad is None and z.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchor_idx": torch.tensor([1])}, "at least 2 anchors"),
        ({"num_supports": 60}, "cannot retrieve k=60"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"anchor_idx": torch.tensor([1, 1, 2])}, "must not repeat"),
    ],
)
def test_build_sops_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {
        "memory": unit(50, 4, seed=15, dtype=torch.float32),
        "anchor_idx": torch.tensor([0, 1, 2]),
        "num_supports": 2,
        "smoothing": 0.1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_sops(**args)


def test_assign_rejects_bad_input() -> None:
    memory = unit(50, 4, seed=16, dtype=torch.float32)
    sops = build_sops(memory, torch.tensor([0, 1]), 1, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        assign(memory[:2], sops, 0.0)
    with pytest.raises(ValueError, match="dim"):
        assign(torch.randn(2, 5), sops, 0.1)


def test_sample_anchors_uniform_and_unique() -> None:
    g = torch.Generator().manual_seed(0)
    a = sample_anchors(1000, 64, num_sets=4, generator=g)
    assert a.shape == (4, 64)
    for row in a:
        assert row.unique().numel() == 64
    counts = torch.bincount(sample_anchors(10, 5, num_sets=4000, generator=g).flatten(), minlength=10)
    assert (counts.float() / counts.sum() - 0.1).abs().max() < 0.01
    with pytest.raises(ValueError, match="anchors"):
        sample_anchors(10, 11)


def test_vote_matrix_rows_sum_to_one() -> None:
    owner = torch.tensor([0, 0, 1, 2])
    w = torch.tensor([0.9, 0.3, 1.0, 0.0])
    y = SOPSet(torch.zeros(4, 2), owner, w, torch.arange(4), num_sops=3).votes
    torch.testing.assert_close(y.sum(1), torch.ones(4))
    assert y[2, 1] == 1.0 and y[2, 0] == 0.0 and y[3, 2] == 0.0 and y[3, 0] == 0.5
    assert isinstance(build_sops(torch.eye(4), torch.tensor([0, 1]), 1, 0.1), SOPSet)
