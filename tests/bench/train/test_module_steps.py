"""All three objectives through the real Lightning module on tiny data, and the output files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sop_plugin.bench.evals.probes import knn_top1
from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.runner import run
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.module import BenchModule
from tests.tinydata import bench_config

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_out(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run(bench_config(out, tiny_data))
    return out


def test_results_schema_and_files(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    validate_results(results)
    assert set(results["methods"]) == {"sop", "dino", "ibot"}
    assert results["dataset"] == "fashion-mnist" and results["profile"] == "quick"
    for name in ("report.md", "knn_curve.png", "metrics.png", "sop_grid.png", "config.json"):
        assert (bench_out / name).stat().st_size > 0, name
    for method in ("sop", "dino", "ibot"):
        assert (bench_out / method / "metrics.csv").exists()
        assert (bench_out / method / "checkpoints" / "last.ckpt").exists()
        r = results["methods"][method]
        assert 0.0 <= r["knn_top1"] <= 100.0 and r["step_seconds_median"] > 0
        assert r["step_seconds_median"] <= r["step_seconds_p90"] <= r["step_seconds_max"]
        assert r["step_seconds_max"] < r["step_seconds_sum"] < r["train_seconds"]
        assert len(r["knn_curve_subset"]) == 2  # before training and after the epoch
    report = (bench_out / "report.md").read_text()
    assert "| sop" in report and "raw" in report.lower()


def test_knn_recomputed_from_embeddings_matches(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    for method, r in results["methods"].items():
        emb = np.load(bench_out / "embeddings" / f"{method}.npz")
        assert emb["train_x"].dtype == np.float32 and emb["train_x"].shape == (96, 32)
        acc = knn_top1(
            torch.from_numpy(emb["train_x"]),
            torch.from_numpy(emb["train_y"]),
            torch.from_numpy(emb["test_x"]),
            torch.from_numpy(emb["test_y"]),
            k=20,
            temperature=0.07,
        )
        assert abs(acc - r["knn_top1"]) < 0.5


def test_checkpoint_holds_sop_memories(bench_out: Path) -> None:
    ckpt = torch.load(bench_out / "sop" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = ckpt["state_dict"].keys()
    for k in (
        "objective.objective.class_memory.bank",
        "objective.objective.class_memory.ptr",
        "objective.objective.patch_memory.bank",
        "objective.objective.patch_memory.ptr",
    ):
        assert k in keys
    assert int(ckpt["state_dict"]["objective.objective.class_memory.ptr"]) == 3 * 16


@pytest.mark.parametrize("method", ["sop", "dino", "ibot"])
def test_training_step_gives_finite_loss_and_gradients(method: str, tiny_data: Path, tmp_path: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data)
    module = BenchModule(bench_settings(cfg).module(method, 10), 1, (0.5,), (0.5,))
    images = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
    loss = module.training_step((images, torch.zeros(8, dtype=torch.long), torch.arange(8)), 0)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in module.teacher.parameters())
    # identical except for the objective: same backbone shapes for every method
    assert module.student.embed_dim == 32


def test_same_everything_but_objective(tiny_data: Path, tmp_path: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data)
    torch.manual_seed(0)
    a = BenchModule(bench_settings(cfg).module("sop", 10), 1, (0.5,), (0.5,))
    torch.manual_seed(0)
    b = BenchModule(bench_settings(cfg).module("dino", 10), 1, (0.5,), (0.5,))
    for (na, pa), (nb, pb) in zip(a.student.named_parameters(), b.student.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    images = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8)
    va, vb = (
        a.augment(images, torch.Generator().manual_seed(1)),
        b.augment(images, torch.Generator().manual_seed(1)),
    )
    assert all(torch.equal(x, y) for x, y in zip(va, vb, strict=True))
