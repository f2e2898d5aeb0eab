"""Retrieval measurements of ``sop-perf``: per-backend search time and recall, design choices, GPU check.

Searches are SOP's: the queries are anchor rows of the memory and are excluded from
their own candidates. The memory is synthetic but clustered like an embedding memory
(unit vectors around ``n / 64`` random centres). Every backend is exact, so recall is a
check (1.0 up to ties), not a trade-off.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, AutoRetrieval, get_retrieval, search_sets
from sop_plugin.core.retrieval.registry import is_available
from sop_plugin.perf.timing import EventSpan, median_seconds, sync


def clustered_memory(
    n: int, dim: int = 256, seed: int = 0, spread: float = 0.6, device: torch.device | str = "cpu"
) -> Tensor:
    """``n`` unit vectors around ``max(1, n // 64)`` random unit centres (noise norm ~ ``spread``)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(max(1, n // 64), dim, generator=gen), dim=1)
    x = torch.randn(n, dim, generator=gen).mul_(spread / dim**0.5)
    x += centres[torch.randint(0, centres.shape[0], (n,), generator=gen)]
    return torch.nn.functional.normalize(x, dim=1).to(device)


def timed_search(
    backend: Any, queries: Tensor, pool: Tensor, k: int, exclude: Tensor, repeats: int, device: torch.device
) -> tuple[float, Tensor]:
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


def retrieval_table(
    memories: list[int],
    queries: list[int],
    k: int,
    device: torch.device,
    repeats: int = 3,
    backends: list[str] | None = None,
    dim: int = 256,
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, float]]]:
    """Rows ``{backend, memory, queries, k, median_s, recall, ...}``, auto's choices and its own timings.

    One backend instance per memory size serves every query count; memories above 65,536 rows
    get one timed call per shape (a search takes seconds there). ``auto`` runs at
    ``queries = 256`` (or the middle count) only, after one untimed call: its one-off
    calibration there is what ``auto_choice`` reports.
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
                if isinstance(backend, AutoRetrieval):
                    backend.search(q, pool, k, exclude=anchors)  # calibration, untimed
                row["median_s"], idx = timed_search(backend, q, pool, k, anchors, reps, device)
                row.update(recall=recall_at_k(idx.cpu(), exact_idx.cpu()), device=device.type, data="clustered")
                if isinstance(backend, AutoRetrieval):
                    key = backend.key(pool, q[None], k)
                    row["choice"] = auto_choice[str(n)] = backend.choice[key]
                    auto_table[str(n)] = backend.table[key]
                rows.append(row)
        del pool, instances
        gc.collect()
    return rows, auto_choice, auto_table


def auto_check(
    rows: list[dict[str, Any]], auto_choice: dict[str, str], auto_table: dict[str, dict[str, float]], queries: int = 256
) -> dict[str, Any]:
    """Per memory size: auto's pick against the fastest backend it measured (``ratio``, the target)
    and, for information, against the fastest backend of the table (``table_ratio``)."""
    out: dict[str, Any] = {}
    for mem, choice in auto_choice.items():
        own = auto_table.get(mem, {})
        if choice not in own:
            continue
        fastest = min(own, key=own.__getitem__)
        entry: dict[str, Any] = {
            "choice": choice,
            "choice_s": own[choice],
            "fastest": fastest,
            "fastest_s": own[fastest],
            "ratio": own[choice] / own[fastest],
        }
        table = {
            r["backend"]: r["median_s"]
            for r in rows
            if str(r["memory"]) == mem and r["queries"] == queries and r["backend"] != "auto"
        }
        if choice in table:
            entry["table_fastest"] = min(table, key=table.__getitem__)
            entry["table_ratio"] = table[choice] / table[entry["table_fastest"]]
        out[mem] = entry
    return out


# ---------------------------------------------------------------------------- design choices


def overfetch(
    knn: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]], queries: Tensor, pool: Tensor, k: int, exclude: Tensor
) -> tuple[Tensor, Tensor]:
    """Exclusion by over-fetching: ``knn``'s top ``k + E`` per query, then the first k not in set t's ``exclude``.

    queries [T, P, d], exclude [T, E] -> ([T, P, k], [T, P, k]); ``knn(queries [Q, d], pool, n)``
    searches without exclusion. At most E of the ``k + E`` are excluded, so the result is exact.
    """
    t, p, d = queries.shape
    n = k + exclude.shape[1]
    sims, idx = (x.view(t, p, n) for x in knn(queries.reshape(t * p, d), pool, n))
    dropped = torch.stack([torch.isin(idx[s], exclude[s]) for s in range(t)])
    first = torch.argsort(dropped.to(torch.uint8), dim=-1, stable=True)[..., :k]
    return sims.gather(-1, first), idx.gather(-1, first)


def design_choices(
    memory: int = 65536, sets: int = 4, anchors: int = 64, k: int = 8, repeats: int = 3, dim: int = 256
) -> list[dict[str, Any]]:
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

        return overfetch(knn, q, pool, k, idx)

    def faiss_rebuild_selector() -> object:
        index = faiss.IndexFlatIP(dim)
        index.add(pool.numpy())
        for t in range(sets):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(idx[t].numpy().astype(np.int64)))
            index.search(q[t].numpy(), k, params=faiss.SearchParameters(sel=sel))
        return None

    variants: list[tuple[str, Callable[[], object]]] = [
        ("torch: one search for all sets, anchors masked per set", lambda: search_sets(torch_b, q, pool, k, idx)),
        (
            "torch: one search for all sets, over-fetch k+P and filter",
            lambda: overfetch(torch_b.search, q, pool, k, idx),
        ),
        (
            "torch: one search per set, anchors masked",
            lambda: [torch_b.search(q[t], pool, k, exclude=idx[t]) for t in range(sets)],
        ),
        ("faiss: faiss.knn on the live memory (no index), over-fetch", lambda: search_sets(faiss_b, q, pool, k, idx)),
        ("faiss: rebuild IndexFlatIP every step, over-fetch", faiss_rebuild_overfetch),
        ("faiss: rebuild IndexFlatIP every step, IDSelector exclusion per set", faiss_rebuild_selector),
    ]
    out = []
    for name, fn in variants:
        fn()  # warm-up
        out.append(
            {
                "variant": name,
                "memory": memory,
                "sets": sets,
                "anchors": anchors,
                "k": k,
                "median_s": median_seconds(fn, repeats, device),
            }
        )
    return out


# ---------------------------------------------------------------------------- GPU correctness


def gpu_retrieval_check(
    memory: int = 65536, queries: int = 1000, k: int = 8, dim: int = 256, excluded: int = 64
) -> dict[str, Any]:
    """Neighbours of ``queries`` random queries on CUDA (torch, faiss-gpu if present) vs. CPU faiss."""
    gen = torch.Generator().manual_seed(3)
    pool = clustered_memory(memory, dim, seed=3)
    q = torch.nn.functional.normalize(torch.randn(queries, dim, generator=gen), dim=1)
    ex = torch.randperm(memory, generator=gen)[:excluded]
    ref_s, ref_i = get_retrieval("faiss").search(q, pool, k, exclude=ex)
    cpu_s, cpu_i = get_retrieval("torch").search(q, pool, k, exclude=ex)
    out: dict[str, Any] = {
        "memory": memory,
        "queries": queries,
        "k": k,
        "excluded": excluded,
        "torch_cpu_vs_faiss_cpu": float((cpu_i == ref_i).float().mean()),
    }
    if not torch.cuda.is_available():
        out["cuda"] = False
        return out
    dev = torch.device("cuda")
    for name in ("torch", "faiss"):
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


# ---------------------------------------------------------------------------- agreement with a CPU search


def tie_aware_agreement(
    found: Tensor, exact: Tensor, queries: Tensor, pool: Tensor, tol: float = 1e-5
) -> tuple[float, float]:
    """(strict, ties-aside) agreement of ``found`` [Q, k] with the ``exact`` [Q, k] neighbour indices.

    Strict: the mean fraction of each query's exact neighbours that ``found`` holds. Ties aside: a found
    row also counts when its similarity (float64, on the CPU) is within ``tol`` of the exact k-th
    neighbour's or above it, i.e. it ties with the neighbour it replaced (or the reference was the one
    off in float32 rounding). ``queries`` [Q, d] and ``pool`` [N, d] are CPU tensors.
    """
    found, exact = found.cpu(), exact.cpu()
    strict = recall_at_k(found, exact)
    q64 = queries.double()[:, None]
    sim_found = (pool[found].double() * q64).sum(-1)
    kth = (pool[exact].double() * q64).sum(-1).min(dim=1, keepdim=True).values
    in_exact = (found[:, :, None] == exact[:, None, :]).any(-1)
    ok = in_exact | (sim_found >= kth - tol)
    return strict, float(ok.double().mean())


def retrieval_agreement(
    memories: list[int],
    queries: int = 1000,
    k: int = 8,
    device: torch.device | str = "cuda",
    repeats: int = 3,
    dim: int = 256,
    backends: list[str] | None = None,
) -> list[dict[str, Any]]:
    """SE retrieval on ``device`` against an exact search on the CPU, per memory size.

    For each memory of ``n`` rows (clustered unit vectors, :func:`clustered_memory`), ``queries`` random
    rows are the anchors: they search the memory for their ``k`` nearest rows with every anchor excluded,
    as SOP's class level does. The reference is the ``torch`` backend on the CPU (exact: fp32 matmul at
    the highest precision, no autocast). Every backend of ``backends`` (default ``torch`` and ``faiss``)
    that runs natively on ``device`` (faiss on CUDA needs faiss-gpu) is timed (median of ``repeats``
    calls after one warm-up call; on CUDA also by CUDA events) and its neighbours checked:
    ``index_agreement`` (fraction of exact neighbours found), ``agreement_ties_aside``
    (:func:`tie_aware_agreement`), ``max_abs_similarity_diff`` and ``excluded_returned``. A backend
    that cannot run on the device gets a row with ``available: false`` and the reason.
    """
    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    for n in memories:
        rows += _agreement_rows(n, queries, k, device, repeats, dim, backends or ["torch", "faiss"])
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _agreement_rows(
    n: int, queries: int, k: int, device: torch.device, repeats: int, dim: int, names: list[str]
) -> list[dict[str, Any]]:
    """:func:`retrieval_agreement`'s rows of one memory size."""
    pool_cpu = clustered_memory(n, dim, seed=n)
    gen = torch.Generator().manual_seed(n + 2)
    anchors = torch.randperm(n, generator=gen)[: min(queries, n // 2)]
    q_cpu = pool_cpu[anchors]
    ref = get_retrieval("torch")
    ref_s, ref_i = ref.search(q_cpu, pool_cpu, k, exclude=anchors)  # warm-up, and the reference
    ref_seconds = median_seconds(lambda: ref.search(q_cpu, pool_cpu, k, exclude=anchors), 1, torch.device("cpu"))
    pool, q, ex = pool_cpu.to(device), q_cpu.to(device), anchors.to(device)
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {
            "backend": name,
            "device": device.type,
            "memory": n,
            "queries": int(anchors.numel()),
            "k": k,
            "dim": dim,
            "excluded": int(anchors.numel()),
            "reference": "torch on the CPU (fp32, highest precision)",
            "reference_s": ref_seconds,
        }
        if name not in RETRIEVAL_BACKENDS or not is_available(name, device):
            why = "faiss without GPU support (no faiss-gpu installed)" if name == "faiss" else "not available"
            rows.append({**row, "available": False, "reason": why})
            continue
        backend = get_retrieval(name)
        backend.search(q, pool, k, exclude=ex)  # warm-up: kernels, faiss-gpu resources
        spans: list[float] = []
        found: list[tuple[Tensor, Tensor]] = []

        def call(backend: Any = backend, spans: list[float] = spans, found: list[Any] = found) -> None:
            span = EventSpan(device)
            span.start()
            found.append(backend.search(q, pool, k, exclude=ex))
            span.stop()
            sync(device)
            seconds = span.seconds()
            if seconds is not None:
                spans.append(seconds)

        row["median_s"] = median_seconds(call, repeats, device)
        if spans:
            row["gpu_event_median_s"] = sorted(spans)[len(spans) // 2]
        sims, idx = found[-1]
        strict, ties = tie_aware_agreement(idx, ref_i, q_cpu, pool_cpu)
        row.update(
            available=True,
            index_agreement=strict,
            agreement_ties_aside=ties,
            max_abs_similarity_diff=float((sims.float().cpu() - ref_s).abs().max()),
            excluded_returned=bool(torch.isin(idx.cpu(), anchors).any()),
            speedup_over_reference=ref_seconds / row["median_s"] if row["median_s"] > 0 else None,
        )
        rows.append(row)
    return rows
