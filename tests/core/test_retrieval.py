"""Retrieval backends: exact ones agree, per-set exclusion, auto; batched SOP sets equal single ones."""

from __future__ import annotations

import logging

import pytest
import torch

from sop_plugin.core import SOPConfig, SOPObjective, assign, build_sop_sets, build_sops, get_retrieval
from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, AutoRetrieval, search_sets
from sop_plugin.core.retrieval.auto import exact_candidates

EXACT = ["torch", "faiss", "auto"]


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def random_anchors(memory_size: int, num_anchors: int, num_sets: int) -> torch.Tensor:
    """[T, P] distinct anchor rows per set, set t drawn from seed t."""
    draws = [torch.randperm(memory_size, generator=torch.Generator().manual_seed(t)) for t in range(num_sets)]
    return torch.stack([d[:num_anchors] for d in draws])


def clustered(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = unit(n // 32, d, seed=seed + 1)
    x = centres[torch.randint(0, centres.shape[0], (n,), generator=g)] + 0.04 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize("name", EXACT)
def test_exact_backends_agree_on_1000_queries(name: str) -> None:
    pool, queries = unit(4096, 64, seed=0), unit(1000, 64, seed=1)
    ex = torch.randperm(4096, generator=torch.Generator().manual_seed(2))[:64]
    ref_s, ref_i = get_retrieval("torch").search(queries, pool, 8, exclude=ex)
    s, i = get_retrieval(name).search(queries, pool, 8, exclude=ex)
    assert (i == ref_i).float().mean() > 0.999  # ties aside
    torch.testing.assert_close(s, ref_s, atol=1e-5, rtol=0)
    assert not torch.isin(i, ex).any()


@pytest.mark.parametrize("name", EXACT)
def test_search_sets_excludes_each_sets_anchors_from_that_set_only(name: str) -> None:
    pool = unit(2000, 32, seed=3)
    anchors = random_anchors(2000, 16, 3)
    anchors[1, :4] = anchors[0, :4]  # shared anchors: excluded from both sets, no others
    backend = get_retrieval(name)
    s, i = search_sets(backend, pool[anchors], pool, 5, anchors)
    for t in range(3):
        ref_s, ref_i = get_retrieval("torch").search(pool[anchors[t]], pool, 5, exclude=anchors[t])
        assert torch.equal(i[t], ref_i)
        torch.testing.assert_close(s[t], ref_s, atol=1e-5, rtol=0)
        assert not torch.isin(i[t], anchors[t]).any()


def test_auto_picks_a_registered_exact_backend_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    auto = AutoRetrieval(repeats=1)
    pool = unit(3000, 32, seed=9)
    with caplog.at_level(logging.INFO, logger="sop_plugin.retrieval"):
        for _ in range(3):
            auto.search(pool[:64], pool, 8, exclude=torch.arange(64))
    (key,) = auto.choice
    choice, table = auto.choice[key], auto.table[key]
    assert choice in RETRIEVAL_BACKENDS and RETRIEVAL_BACKENDS.get(choice).exact and choice != "auto"
    assert set(table) == set(exact_candidates("cpu"))
    assert table[choice] == min(table.values())
    assert len([r for r in caplog.records if "retrieval=auto" in r.getMessage()]) == 1


def test_auto_measures_each_shape_once() -> None:
    """A shape is measured once; a new shape (another k) gets its own measurement."""
    pool = unit(500, 8, seed=12)
    q, ex = pool[:16], torch.arange(16)
    calls: list[str] = []

    def fake_time(backend: object, *args: object) -> float:
        calls.append(backend.name)  # type: ignore[attr-defined]
        return 0.0 if backend.name == "faiss" else 1.0  # type: ignore[attr-defined]

    auto = AutoRetrieval(candidates=["torch", "faiss"])
    auto._time = fake_time  # type: ignore[method-assign]
    for _ in range(5):
        auto.search(q, pool, 4, exclude=ex)
    assert calls == ["torch", "faiss"] and set(auto.choice.values()) == {"faiss"}
    auto.search(q, pool, 3, exclude=ex)
    assert len(calls) == 4 and len(auto.choice) == 2


@pytest.mark.parametrize("k", [0, 3])
def test_batched_sets_equal_per_set_build_sops(k: int) -> None:
    memory = unit(500, 16, seed=10)
    anchors = random_anchors(500, 12, 4)
    batched = build_sop_sets(memory, anchors, k, 0.1, get_retrieval("torch"))
    for t in range(4):
        got = batched[t]
        ref = build_sops(memory, anchors[t], k, 0.1, get_retrieval("torch"))
        assert torch.equal(got.memory_index, ref.memory_index) and torch.equal(got.owner, ref.owner)
        torch.testing.assert_close(got.votes, ref.votes)
        torch.testing.assert_close(got.supports, ref.supports)


def test_assign_on_stacked_sets_equals_dense_votes() -> None:
    """assign() never builds Y; it must equal softmax(z D^T / tau) Y with the dense votes, per set."""
    obj = SOPObjective(
        SOPConfig(
            dim=16,
            class_memory_size=400,
            patch_memory_size=400,
            class_num_anchors=8,
            class_num_supports=3,
            patch_num_anchors=16,
        )
    )
    z = unit(20, 16, seed=11)
    for level in ("class", "patch"):
        sets = obj.build_sets(level, step=2)
        dense = torch.bmm((torch.einsum("nd,trd->tnr", z, sets.supports) / 0.1).softmax(-1), sets.votes)
        torch.testing.assert_close(assign(z, sets, 0.1), dense, atol=1e-6, rtol=0)
        for t in range(sets.supports.shape[0]):
            torch.testing.assert_close(assign(z, sets[t], 0.1), dense[t], atol=1e-6, rtol=0)


def test_torch_backend_stays_exact_under_bf16_autocast() -> None:
    pool, queries = unit(3000, 64, seed=12), unit(200, 64, seed=13)
    ref_s, ref_i = get_retrieval("torch").search(queries, pool, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, i = get_retrieval("torch").search(queries, pool, 8)
    assert s.dtype == torch.float32 and (i == ref_i).float().mean() > 0.999
    torch.testing.assert_close(s, ref_s, atol=1e-5, rtol=0)
