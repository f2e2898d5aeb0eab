"""Retrieval measurements of ``sop-perf``: per-backend search time and recall, design choices, GPU check.

Searches are SOP's: the queries are anchor rows of the memory and are excluded from
their own candidates. The memory is synthetic but clustered like an embedding memory
(unit vectors around ``n / 64`` random centres); exact backends do not care, IVF recall does.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sop_plugin.core.retrieval import (
    RETRIEVAL_BACKENDS,
    get_retrieval,
    is_available,
    is_exact,
    overfetch_sets,
    search_sets,
)
from sop_plugin.core.retrieval_auto import AutoRetrieval
from sop_plugin.core.retrieval_ivf import FaissIVFRetrieval


def clustered_memory(n: int, dim: int = 256, seed: int = 0, spread: float = 0.6,
                     device: torch.device | str = "cpu") -> Tensor:
    """``n`` unit vectors around ``max(1, n // 64)`` random unit centres (noise norm ~ ``spread``)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(max(1, n // 64), dim, generator=gen), dim=1)
    x = torch.randn(n, dim, generator=gen).mul_(spread / dim**0.5)
    x += centres[torch.randint(0, centres.shape[0], (n,), generator=gen)]
    return torch.nn.functional.normalize(x, dim=1).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    runs = []
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def timed_search(backend: Any, queries: Tensor, pool: Tensor, k: int, exclude: Tensor, repeats: int,
                 device: torch.device) -> tuple[float, Tensor]:
    """Median seconds of ``repeats`` searches and the indices the last one found."""
    found: list[Tensor] = []

    def call() -> None:
        found.append(backend.search(queries, pool, k, exclude=exclude)[1])

    return median_seconds(call, repeats, device), found[-1]


def recall_at_k(found: Tensor, exact: Tensor) -> float:
    """Mean fraction of each query's exact k neighbours that ``found`` contains."""
    hits = (found[..., :, None] == exact[..., None, :]).any(-1)
    return float(hits.float().mean())


def table_backends(device: torch.device) -> list[str]:
    """Every registered backend that runs natively on ``device``."""
    return [n for n in sorted(RETRIEVAL_BACKENDS) if is_available(n, device)]


#: backends that keep state between calls (an index, a calibration, an adaptive shortlist): warmed up first
STATEFUL = ("faiss-ivf", "auto", "torch-bf16")


def retrieval_table(memories: list[int], queries: list[int], k: int, device: torch.device,
                    repeats: int = 3, backends: list[str] | None = None, dim: int = 256,
                    ) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, float]]]:
    """Rows ``{backend, memory, queries, k, median_s, recall, ...}``, auto's choices and its own timings.

    One backend instance per memory size serves every query count, so IVF builds its index
    once (reported as ``build_s``). Stateful backends get one untimed warm-up call per shape;
    memories above 65,536 rows get one timed call per shape (a search takes seconds there).
    ``auto`` runs at ``queries = 256`` (or the middle count) only: its one-off calibration
    there is what ``auto_choice`` reports.
    """
    names = backends or table_backends(device)
    rows: list[dict[str, Any]] = []
    auto_choice: dict[str, str] = {}
    auto_table: dict[str, dict[str, float]] = {}
    pick_q = 256 if 256 in queries else sorted(queries)[len(queries) // 2]
    for n in memories:
        pool = clustered_memory(n, dim, seed=n, device=device)
        instances = {name: get_retrieval(name) for name in names}
        gen = torch.Generator().manual_seed(n + 1)
        reps = repeats if n <= 65536 else 1
        for nq in queries:
            anchors = torch.randperm(n, generator=gen)[:nq].to(device)
            q = pool[anchors]
            _, exact_idx = get_retrieval("torch").search(q, pool, k, exclude=anchors)
            for name, backend in instances.items():
                if name == "auto" and nq != pick_q:
                    continue
                row: dict[str, Any] = {"backend": name, "memory": n, "queries": nq, "k": k}
                if name in STATEFUL:
                    start = time.perf_counter()
                    backend.search(q, pool, k, exclude=anchors)
                    _sync(device)
                    if isinstance(backend, FaissIVFRetrieval) and nq == queries[0]:
                        row["build_s"] = time.perf_counter() - start  # train + add (first call)
                        row["nlist"], row["nprobe"] = backend._index.nlist, backend._index.nprobe  # type: ignore[attr-defined]
                row["median_s"], idx = timed_search(backend, q, pool, k, anchors, reps, device)
                row.update(recall=recall_at_k(idx.cpu(), exact_idx.cpu()), exact=is_exact(name),
                           device=device.type, data="clustered")
                if isinstance(backend, AutoRetrieval):
                    key = backend.key(pool, q[None], k)
                    row["choice"] = auto_choice[str(n)] = backend.choice[key]
                    auto_table[str(n)] = backend.table[key]
                rows.append(row)
        del pool, instances
        gc.collect()
    return rows, auto_choice, auto_table


def auto_check(rows: list[dict[str, Any]], auto_choice: dict[str, str], auto_table: dict[str, dict[str, float]],
               queries: int = 256) -> dict[str, Any]:
    """Per memory size: auto's pick against the fastest backend it measured (``ratio``, the target)
    and, for information, against the fastest exact backend of the table (``table_ratio``)."""
    out: dict[str, Any] = {}
    for mem, choice in auto_choice.items():
        own = auto_table.get(mem, {})
        if choice not in own:
            continue
        fastest = min(own, key=own.__getitem__)
        entry: dict[str, Any] = {"choice": choice, "choice_s": own[choice], "fastest": fastest,
                                 "fastest_s": own[fastest], "ratio": own[choice] / own[fastest]}
        table = {r["backend"]: r["median_s"] for r in rows
                 if str(r["memory"]) == mem and r["queries"] == queries and r["exact"] and r["backend"] != "auto"}
        if choice in table:
            entry["table_fastest"] = min(table, key=table.__getitem__)
            entry["table_ratio"] = table[choice] / table[entry["table_fastest"]]
        out[mem] = entry
    return out


# ---------------------------------------------------------------------------- design choices


def design_choices(memory: int = 65536, sets: int = 4, anchors: int = 64, k: int = 8, repeats: int = 3,
                   dim: int = 256, enqueue: int = 64) -> list[dict[str, Any]]:
    """How to search a memory that changes every step (CPU): rebuild vs. no index, masking vs. over-fetch.

    The shape is SOP's class level: ``sets`` sets of ``anchors`` anchors, k SEs each.
    """
    import faiss

    device = torch.device("cpu")
    pool = clustered_memory(memory, dim, seed=7)
    gen = torch.Generator().manual_seed(8)
    idx = torch.stack([torch.randperm(memory, generator=gen)[:anchors] for _ in range(sets)])
    q = pool[idx]
    torch_b, faiss_b = get_retrieval("torch"), get_retrieval("faiss")

    def faiss_rebuild_overfetch() -> object:
        def knn(qq: Tensor, x: Tensor, kk: int) -> tuple[Tensor, Tensor]:
            index = faiss.IndexFlatIP(dim)
            index.add(x.numpy())
            s, i = index.search(qq.numpy(), kk)
            return torch.from_numpy(s), torch.from_numpy(i)

        return overfetch_sets(knn, q, pool, k, idx)

    def faiss_rebuild_selector() -> object:
        index = faiss.IndexFlatIP(dim)
        index.add(pool.numpy())
        for t in range(sets):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(idx[t].numpy().astype(np.int64)))
            index.search(q[t].numpy(), k, params=faiss.SearchParameters(sel=sel))
        return None

    ivf = FaissIVFRetrieval()
    search_sets(ivf, q, pool, k, idx)  # build once
    ptr = [0]

    def ivf_update() -> object:
        rows = torch.arange(ptr[0], ptr[0] + enqueue) % memory
        pool[rows] = clustered_memory(enqueue, dim, seed=ptr[0] + 100)
        ptr[0] += enqueue
        return search_sets(ivf, q, pool, k, idx)

    variants: list[tuple[str, Callable[[], object], int]] = [
        ("torch: one search for all sets, anchors masked per set", lambda: search_sets(torch_b, q, pool, k, idx),
         repeats),
        ("torch: one search for all sets, over-fetch k+P and filter",
         lambda: overfetch_sets(lambda a, b, c: torch_b.search(a, b, c), q, pool, k, idx), repeats),
        ("torch: one search per set, anchors masked",
         lambda: [torch_b.search(q[t], pool, k, exclude=idx[t]) for t in range(sets)], repeats),
        ("faiss: faiss.knn on the live memory (no index), over-fetch", lambda: search_sets(faiss_b, q, pool, k, idx),
         repeats),
        ("faiss: rebuild IndexFlatIP every step, over-fetch", faiss_rebuild_overfetch, repeats),
        ("faiss: rebuild IndexFlatIP every step, IDSelector exclusion per set", faiss_rebuild_selector, repeats),
        (f"faiss-ivf: re-add the {enqueue} rows enqueued since the last step, then search", ivf_update, repeats),
        ("faiss-ivf: rebuild the index (train + add) every step",
         lambda: search_sets(FaissIVFRetrieval(), q, pool, k, idx), 1),
    ]
    out = []
    for name, fn, reps in variants:
        fn()  # warm-up
        out.append({"variant": name, "memory": memory, "sets": sets, "anchors": anchors, "k": k,
                    "median_s": median_seconds(fn, reps, device)})
    return out


# ---------------------------------------------------------------------------- GPU correctness


def gpu_retrieval_check(memory: int = 65536, queries: int = 1000, k: int = 8, dim: int = 256,
                        excluded: int = 64) -> dict[str, Any]:
    """Neighbours of ``queries`` random queries on CUDA (torch, torch-bf16, faiss-gpu if present) vs. CPU faiss."""
    gen = torch.Generator().manual_seed(3)
    pool = clustered_memory(memory, dim, seed=3)
    q = torch.nn.functional.normalize(torch.randn(queries, dim, generator=gen), dim=1)
    ex = torch.randperm(memory, generator=gen)[:excluded]
    ref_s, ref_i = get_retrieval("faiss").search(q, pool, k, exclude=ex)
    cpu_s, cpu_i = get_retrieval("torch").search(q, pool, k, exclude=ex)
    out: dict[str, Any] = {"memory": memory, "queries": queries, "k": k, "excluded": excluded,
                           "torch_cpu_vs_faiss_cpu": float((cpu_i == ref_i).float().mean())}
    if not torch.cuda.is_available():
        out["cuda"] = False
        return out
    dev = torch.device("cuda")
    for name in ("torch", "torch-bf16", "faiss"):
        if not is_available(name, dev):
            out[f"{name}_cuda"] = "unavailable (no faiss-gpu)"
            continue
        s, i = get_retrieval(name).search(q.to(dev), pool.to(dev), k, exclude=ex.to(dev))
        assert s.is_cuda and i.is_cuda, f"{name} returned host tensors for CUDA inputs"
        out[f"{name}_cuda_vs_faiss_cpu"] = {
            "index_agreement": float((i.cpu() == ref_i).float().mean()),
            "max_abs_similarity_diff": float((s.cpu() - ref_s).abs().max()),
            "excluded_returned": bool(torch.isin(i.cpu(), ex).any()),
        }
    out["cuda"] = True
    return out
