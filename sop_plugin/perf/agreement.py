"""The agreement part of ``sop-perf``: the neighbours found on a device against an exact CPU search.

A faster search is only worth having if it finds the same neighbours: :func:`retrieval_agreement`
(``parts=agreement``, stage 2 of ``benchmarks/gpu_run.sh``) times each backend on the device and
compares its neighbours with the ``torch`` backend on the CPU, per memory size;
:func:`gpu_retrieval_check` (``parts=retrieval`` on CUDA) compares one memory's neighbours on the GPU
with CPU faiss. The memories are :func:`~sop_plugin.perf.retrieval.clustered_memory`'s.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import Tensor

from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, get_retrieval
from sop_plugin.core.retrieval.registry import is_available
from sop_plugin.perf.retrieval import clustered_memory, recall_at_k
from sop_plugin.perf.timing import EventSpan, median_seconds, sync


def gpu_retrieval_check(
    memory: int = 65536, queries: int = 1000, k: int = 8, dim: int = 256, excluded: int = 64
) -> dict[str, Any]:
    """Neighbours of ``queries`` random queries on CUDA (torch, faiss-gpu if present) vs. CPU faiss.

    The memory holds ``memory`` rows of ``dim``; ``excluded`` random rows are excluded from every
    query's candidates. Off CUDA only the CPU torch backend is compared (``cuda: false``).
    """
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
    """:func:`retrieval_agreement`'s rows of one memory size (one row per backend of ``names``)."""
    pool_cpu = clustered_memory(n, dim, seed=n)
    gen = torch.Generator().manual_seed(n + 2)
    anchors = torch.randperm(n, generator=gen)[: min(queries, n // 2)]
    q_cpu = pool_cpu[anchors]
    ref = get_retrieval("torch")
    ref_s, ref_i = ref.search(q_cpu, pool_cpu, k, exclude=anchors)  # warm-up, and the reference

    def reference() -> object:
        return ref.search(q_cpu, pool_cpu, k, exclude=anchors)

    ref_seconds = median_seconds(reference, 1, torch.device("cpu"))
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
            why = "not available"
            if name == "faiss":
                why = "faiss without GPU support (no faiss-gpu installed)"
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
