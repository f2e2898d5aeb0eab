"""``auto`` under DDP: inside ``lockstep`` every rank adopts rank 0's backend, outside it never
communicates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sop_plugin.core.retrieval import AutoRetrieval, lockstep


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rows = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    pool = torch.nn.functional.normalize(rows, dim=1)
    q, ex = pool[:16], torch.arange(16)
    preferred = ("torch", "faiss")[rank]  # each rank alone would pick a different backend

    def fake_time(backend: object, *args: object) -> float:
        return 0.0 if backend.name == preferred else 1.0  # type: ignore[attr-defined]

    inside = AutoRetrieval(candidates=["torch", "faiss"])
    outside = AutoRetrieval(candidates=["torch", "faiss"])
    inside._time = fake_time  # type: ignore[method-assign]
    outside._time = fake_time  # type: ignore[method-assign]
    with lockstep(inside):
        inside.search(q, pool, 4, exclude=ex)
    outside.search(q, pool, 4, exclude=ex)  # no collective: would hang if it communicated alone
    Path(out_dir, f"{rank}.txt").write_text(
        f"{next(iter(inside.choice.values()))} {next(iter(outside.choice.values()))}"
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_auto_agrees_on_rank0_choice_in_lockstep_only(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "0.txt").read_text() == "torch torch"
    assert (tmp_path / "1.txt").read_text() == "torch faiss"
