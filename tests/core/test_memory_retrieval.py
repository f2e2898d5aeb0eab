"""Memory FIFO behaviour and the agreement of retrieval backends."""

import pytest
import torch

from sop_plugin.core import SupportMemory, get_retrieval


def test_memory_starts_with_unit_vectors_and_is_seeded() -> None:
    a, b = SupportMemory(100, 16, seed=1), SupportMemory(100, 16, seed=1)
    torch.testing.assert_close(a.bank.norm(dim=1), torch.ones(100))
    assert torch.equal(a.bank, b.bank)
    assert not torch.equal(a.bank, SupportMemory(100, 16, seed=2).bank)


def test_memory_fifo_wraps_around() -> None:
    mem = SupportMemory(10, 4)
    batches = [torch.nn.functional.normalize(torch.randn(4, 4), dim=1) for _ in range(3)]
    for x in batches:
        mem.enqueue(x)
    assert int(mem.ptr) == 2
    torch.testing.assert_close(mem.bank[4:8], batches[1])
    torch.testing.assert_close(mem.bank[8:10], batches[2][:2])
    torch.testing.assert_close(mem.bank[0:2], batches[2][2:])


def test_memory_normalises_and_is_in_state_dict() -> None:
    mem = SupportMemory(6, 3)
    mem.enqueue(torch.tensor([[3.0, 0.0, 4.0]]))
    torch.testing.assert_close(mem.bank[0], torch.tensor([0.6, 0.0, 0.8]))
    state = mem.state_dict()
    assert set(state) == {"bank", "ptr"}
    other = SupportMemory(6, 3, seed=9)
    other.load_state_dict(state)
    assert torch.equal(other.bank, mem.bank) and int(other.ptr) == 1


def test_memory_rejects_bad_input() -> None:
    mem = SupportMemory(4, 3)
    with pytest.raises(ValueError, match="memory size"):
        mem.enqueue(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        mem.enqueue(torch.randn(2, 4))


@pytest.mark.parametrize("exclude", [False, True])
def test_torch_and_faiss_agree_on_1000_queries(exclude: bool) -> None:
    g = torch.Generator().manual_seed(0)
    pool = torch.nn.functional.normalize(torch.randn(8192, 64, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(1000, 64, generator=g), dim=1)
    ex = torch.randperm(8192, generator=g)[:100] if exclude else None
    s1, i1 = get_retrieval("torch").search(queries, pool, 8, exclude=ex)
    s2, i2 = get_retrieval("faiss").search(queries, pool, 8, exclude=ex)
    assert (i1 == i2).float().mean() > 0.999  # ties aside
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=0)
    if ex is not None:
        assert not torch.isin(i1, ex).any() and not torch.isin(i2, ex).any()


def test_torch_chunked_equals_unchunked() -> None:
    g = torch.Generator().manual_seed(1)
    pool = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=1)
    q = pool[:20]
    ex = torch.arange(20)
    s1, i1 = get_retrieval("torch", chunk_rows=64).search(q, pool, 5, exclude=ex)
    s2, i2 = get_retrieval("torch").search(q, pool, 5, exclude=ex)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)
    brute = q @ pool.T
    brute[:, ex] = -2
    torch.testing.assert_close(s2, brute.topk(5, dim=1).values)


def test_unknown_backend_and_too_large_k() -> None:
    with pytest.raises(ValueError, match="unknown retrieval backend"):
        get_retrieval("nope")
    with pytest.raises(ValueError, match="cannot retrieve k=9"):
        get_retrieval("torch").search(torch.randn(2, 4), torch.randn(10, 4), 9, exclude=torch.arange(2))
