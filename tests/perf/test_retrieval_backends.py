"""Retrieval backends: exact ones agree, per-set exclusion, bf16 certification, IVF upkeep, auto."""

from __future__ import annotations

import logging

import pytest
import torch

from sop_plugin.core import SOPConfig, SOPObjective, build_sops, get_retrieval
from sop_plugin.core.objective import assign_batched
from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, is_exact, search_sets
from sop_plugin.core.retrieval_auto import AutoRetrieval, exact_candidates, lockstep
from sop_plugin.core.sops_batched import assign_sets, build_sop_sets, stack_sets

EXACT = ["torch", "torch-bf16", "faiss", "auto"]


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


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
    anchors = torch.stack([torch.randperm(2000, generator=torch.Generator().manual_seed(s))[:16] for s in range(3)])
    anchors[1, :4] = anchors[0, :4]  # shared anchors: excluded from both sets, no others
    backend = get_retrieval(name)
    s, i = search_sets(backend, pool[anchors], pool, 5, anchors)
    for t in range(3):
        ref_s, ref_i = get_retrieval("torch").search(pool[anchors[t]], pool, 5, exclude=anchors[t])
        assert torch.equal(i[t], ref_i)
        torch.testing.assert_close(s[t], ref_s, atol=1e-5, rtol=0)
        assert not torch.isin(i[t], anchors[t]).any()


def test_torch_bf16_is_exact_on_a_collapsed_memory() -> None:
    """Near-identical rows defeat the bf16 shortlist: the fp32 fallback must take over."""
    g = torch.Generator().manual_seed(4)
    pool = torch.nn.functional.normalize(unit(1, 64, seed=5) + 0.003 * torch.randn(3000, 64, generator=g), dim=1)
    backend = get_retrieval("torch-bf16")
    q, ex = pool[:100], torch.arange(100)
    s, i = backend.search(q, pool, 8, exclude=ex)
    ref_s, ref_i = get_retrieval("torch").search(q, pool, 8, exclude=ex)
    assert backend.last_fallback > 0
    assert (i == ref_i).float().mean() > 0.99
    torch.testing.assert_close(s, ref_s, atol=1e-6, rtol=0)
    assert backend.fp32_calls_left == backend.probe_every  # most queries fell back: fp32 for a while
    s2, i2 = backend.search(q, pool, 8, exclude=ex)
    assert torch.equal(i2, ref_i) and backend.fp32_calls_left == backend.probe_every - 1


def test_torch_bf16_certifies_clustered_memories() -> None:
    pool = clustered(8192, 64, seed=6)  # shortlist limit 8192 // 128 = 64 rows
    backend = get_retrieval("torch-bf16")
    for _ in range(3):  # the shortlist adapts after a call with fallbacks
        s, i = backend.search(pool[:256], pool, 8, exclude=torch.arange(256))
    ref_s, ref_i = get_retrieval("torch").search(pool[:256], pool, 8, exclude=torch.arange(256))
    assert backend.last_fallback < 256 // 10
    assert (i == ref_i).float().mean() > 0.999


def test_torch_bf16_shortlist_stays_within_its_limit() -> None:
    """Memories of repeated embeddings (the same batch step after step) must not grow the re-ranked
    shortlist past one row in ``rows_per_candidate``; answers stay exact."""
    backend, ref = get_retrieval("torch-bf16"), get_retrieval("torch")
    limit = backend.shortlist_limit(8192, 8)
    assert limit == 64 and backend.shortlist_limit(65536, 8) == 512 and backend.shortlist_limit(1024, 8) == 16
    g = torch.Generator().manual_seed(11)
    for distinct, noise in ((64, 0.0), (64, 0.01), (512, 0.01), (8192, 1.0), (64, 0.1)):
        base = unit(distinct, 64, seed=distinct)
        pool = torch.nn.functional.normalize(base.repeat(8192 // distinct, 1) + noise * torch.randn(8192, 64, generator=g),
                                             dim=1)
        anchors = torch.stack([torch.randperm(8192, generator=g)[:64] for _ in range(4)])
        for _ in range(4):
            s, _ = search_sets(backend, pool[anchors], pool, 8, anchors)
            assert backend.shortlist <= limit
        ref_s, _ = search_sets(ref, pool[anchors], pool, 8, anchors)
        torch.testing.assert_close(s, ref_s, atol=1e-6, rtol=0)  # indices may differ between exact ties


def test_faiss_ivf_recall_and_incremental_update() -> None:
    pool = clustered(8192, 64, seed=7)
    ivf = get_retrieval("faiss-ivf", nprobe=16)
    q = pool[:200]
    _, ref = get_retrieval("torch").search(q, pool, 8, exclude=torch.arange(200))
    _, got = ivf.search(q, pool, 8, exclude=torch.arange(200))
    recall = (got[:, :, None] == ref[:, None, :]).any(-1).float().mean()
    assert recall > 0.9
    # overwrite rows as a FIFO enqueue does: only those are re-added, and they are found
    pool[300:364] = q[:64] * 0.999 + 0.001 * unit(64, 64, seed=8)
    pool[300:364] = torch.nn.functional.normalize(pool[300:364], dim=1)
    _, got = ivf.search(q[:64], pool, 1, exclude=torch.arange(200))
    assert ivf.last_update_rows == 64
    assert torch.equal(got[:, 0], torch.arange(300, 364))
    assert not is_exact("faiss-ivf")


def test_auto_picks_a_registered_exact_backend_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    auto = AutoRetrieval(repeats=1)
    pool = unit(3000, 32, seed=9)
    with caplog.at_level(logging.INFO, logger="sop_plugin.retrieval"):
        for _ in range(3):
            auto.search(pool[:64], pool, 8, exclude=torch.arange(64))
    (key,) = auto.choice
    choice, table = auto.choice[key], auto.table[key]
    assert choice in RETRIEVAL_BACKENDS and is_exact(choice) and choice != "auto"
    assert set(table) == set(exact_candidates("cpu"))
    assert table[choice] == min(table.values())
    assert len([r for r in caplog.records if "retrieval=auto" in r.getMessage()]) == 1


def test_auto_measures_again_at_fixed_lockstep_calls() -> None:
    """The fastest backend on the first (random) memory need not stay the fastest: lockstep calls
    re-measure at fixed counts, other calls never do (their counts may differ between DDP ranks)."""
    pool = unit(500, 8, seed=12)
    q, ex = pool[:16], torch.arange(16)
    fastest = {"now": "torch"}

    def fake_time(backend: object, *args: object) -> float:
        return 0.0 if backend.name == fastest["now"] else 1.0  # type: ignore[attr-defined]

    auto = AutoRetrieval(candidates=["torch", "faiss"], recalibrate_at=(3,))
    auto._time = fake_time  # type: ignore[method-assign]
    (key_choice,) = [auto.calibrate(500, queries=16, k=4, dim=8)]
    assert key_choice == "torch"
    fastest["now"] = "faiss"
    for _ in range(5):
        auto.search(q, pool, 4, exclude=ex)  # outside lockstep: no re-measure
    assert set(auto.choice.values()) == {"torch"}
    with lockstep(auto):
        for call in range(1, 5):
            auto.search(q, pool, 4, exclude=ex)
            assert set(auto.choice.values()) == {"faiss" if call >= 3 else "torch"}


def test_auto_calibrates_at_construction() -> None:
    auto = AutoRetrieval(repeats=1, memory_size=2048, queries=32, k=4, dim=16, sets=2)
    assert len(auto.choice) == 1 and next(iter(auto.choice.values())) in exact_candidates("cpu")


@pytest.mark.parametrize("k", [0, 3])
def test_batched_sets_equal_per_set_build_sops(k: int) -> None:
    memory = unit(500, 16, seed=10)
    anchors = torch.stack([torch.randperm(500, generator=torch.Generator().manual_seed(s))[:12] for s in range(4)])
    batched = build_sop_sets(memory, anchors, k, 0.1, get_retrieval("torch"))
    for t, got in enumerate(batched):
        ref = build_sops(memory, anchors[t], k, 0.1, get_retrieval("torch"))
        assert torch.equal(got.memory_index, ref.memory_index) and torch.equal(got.owner, ref.owner)
        torch.testing.assert_close(got.votes, ref.votes)
        torch.testing.assert_close(got.supports, ref.supports)


def test_assign_sets_equals_dense_votes() -> None:
    obj = SOPObjective(SOPConfig(dim=16, class_memory_size=400, patch_memory_size=400, class_num_anchors=8,
                                 class_num_supports=3, patch_num_anchors=16))
    z = unit(20, 16, seed=11)
    for level in ("class", "patch"):
        sets = obj.build_sets(level, step=2)
        stacked = stack_sets(sets)
        dense = assign_batched(z, stacked.supports, torch.stack([s.votes for s in sets]), 0.1)
        torch.testing.assert_close(assign_sets(z, stacked, 0.1), dense, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["torch", "torch-bf16"])
def test_torch_backends_stay_exact_under_bf16_autocast(name: str) -> None:
    pool, queries = unit(3000, 64, seed=12), unit(200, 64, seed=13)
    ref_s, ref_i = get_retrieval("torch").search(queries, pool, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, i = get_retrieval(name).search(queries, pool, 8)
    assert s.dtype == torch.float32 and (i == ref_i).float().mean() > 0.999
    torch.testing.assert_close(s, ref_s, atol=1e-5, rtol=0)
