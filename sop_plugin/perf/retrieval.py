"""The retrieval part of ``sop-perf``: search time and recall per backend, and ``auto``'s choices.

Searches are SOP's: the queries are anchor rows of the memory and are excluded from
their own candidates. The memory is synthetic but clustered like an embedding memory
(unit vectors around ``n / 64`` random centres). Every backend is exact, so recall is a
check (1.0 up to ties), not a trade-off. The other retrieval parts build on the memory and
the recall here: :mod:`~sop_plugin.perf.design` (how to search a memory that changes every
step) and :mod:`~sop_plugin.perf.agreement` (the neighbours found on a device against an exact
CPU search).
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import Tensor

from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, AutoRetrieval, get_retrieval
from sop_plugin.core.retrieval.registry import is_available
from sop_plugin.perf.timing import median_seconds

#: ``auto``'s own timings, ``{memory rows (str): {backend: seconds}}``: what it calibrated on
AutoTable = dict[str, dict[str, float]]


def clustered_memory(
    n: int, dim: int = 256, seed: int = 0, spread: float = 0.6, device: torch.device | str = "cpu"
) -> Tensor:
    """[n, dim] unit vectors around ``max(1, n // 64)`` random unit centres (noise norm ~ ``spread``)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(max(1, n // 64), dim, generator=gen), dim=1)
    x = torch.randn(n, dim, generator=gen).mul_(spread / dim**0.5)
    x += centres[torch.randint(0, centres.shape[0], (n,), generator=gen)]
    return torch.nn.functional.normalize(x, dim=1).to(device)


def timed_search(
    backend: Any, queries: Tensor, pool: Tensor, k: int, exclude: Tensor, repeats: int, device: torch.device
) -> tuple[float, Tensor]:
    """Median seconds of ``repeats`` searches and the indices [Q, k] the last one found.

    queries [Q, d], pool [N, d], exclude [E] (rows of ``pool`` no query may return).
    """
    found: list[Tensor] = []

    def call() -> None:
        found.append(backend.search(queries, pool, k, exclude=exclude)[1])

    return median_seconds(call, repeats, device), found[-1]


def recall_at_k(found: Tensor, exact: Tensor) -> float:
    """Mean fraction of each query's exact k neighbours that ``found`` contains (both [..., Q, k])."""
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
) -> tuple[list[dict[str, Any]], dict[str, str], AutoTable]:
    """Rows ``{backend, memory, queries, k, median_s, recall, ...}``, auto's choices and its own timings.

    One backend instance per memory size serves every query count; memories above 65,536 rows
    get one timed call per shape (a search takes seconds there). ``auto`` runs at
    ``queries = 256`` (or the middle count) only, after one untimed call: its one-off
    calibration there is what ``auto_choice`` (``{memory rows: backend}``) reports.
    """
    names = backends or table_backends(device)
    rows: list[dict[str, Any]] = []
    auto_choice: dict[str, str] = {}
    auto_table: AutoTable = {}
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
                row["recall"] = recall_at_k(idx.cpu(), exact_idx.cpu())
                row.update(device=device.type, data="clustered")
                if isinstance(backend, AutoRetrieval):
                    key = backend.key(pool, q[None], k)
                    row["choice"] = auto_choice[str(n)] = backend.choice[key]
                    auto_table[str(n)] = backend.table[key]
                rows.append(row)
        del pool, instances
        gc.collect()
    return rows, auto_choice, auto_table


def auto_check(
    rows: list[dict[str, Any]], auto_choice: dict[str, str], auto_table: AutoTable, queries: int = 256
) -> dict[str, Any]:
    """Per memory size: auto's pick against the fastest backend it measured (``ratio``, the target)
    and, for information, against the fastest backend of the table (``table_ratio``).

    ``rows``, ``auto_choice`` and ``auto_table`` are :func:`retrieval_table`'s; ``queries`` is the
    query count auto ran at.
    """
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
