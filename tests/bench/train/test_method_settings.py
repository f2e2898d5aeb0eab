"""Each method's authors' recipe: deterministic teacher, last-layer freeze, optimisation, recipe=shared."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.method_settings import method_settings, recipe_summary
from sop_plugin.bench.train.module import BenchModule
from sop_plugin.methods import MaskConfig
from tests.tinydata import bench_config


def _module(
    tmp_path: Path, data: Path, method: str, extra: list[str] | None = None, steps: int = 10
) -> BenchModule:
    return BenchModule(
        bench_settings(bench_config(tmp_path, data, extra)).module(method, steps), 1, (0.5,), (0.5,)
    )


def test_authors_recipe_is_the_default(tmp_path: Path, tiny_data: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data)
    assert cfg["recipe"] == "authors"
    sop = cfg["sop"]
    assert sop["teacher_temp"] == sop["warmup_teacher_temp"] == 0.04  # constant, class and patch level
    assert sop["anchor_keep"] == 0.5 and sop["memory_view"] == 1
    assert method_settings(cfg, "sop").masks == MaskConfig(1.0, (0.3, 0.3), 2)
    assert method_settings(cfg, "ibot").masks == MaskConfig(0.5, (0.1, 0.5), 2)
    assert method_settings(cfg, "dino").masks is None
    for m in ("dino", "ibot"):
        assert cfg[m]["norm_last_layer"] is False and cfg[m]["freeze_last_layer_fraction"] > 0
        assert cfg[m]["warmup_teacher_temp"] == 0.04 and cfg[m]["student_temp"] == 0.1
        assert method_settings(cfg, m).config_for(1000).freeze_last_layer_steps == 10  # 1 % of the run
    assert cfg["model"]["drop_path_rate"] == 0.1 and cfg["optim"]["clip_grad"] == 3.0


def test_tuned_defaults_are_the_tuning_grids_choice(tmp_path: Path, tiny_data: Path) -> None:
    """Each method's lr, teacher temperature and KoLeo weight are its own best point of the committed grid,
    refined in stage 3 (the grid's choice among the candidates, the best mean over seeds chosen)."""
    tuning = Path(__file__).resolve().parents[3] / "docs/results/tuning"
    grid = json.loads((tuning / "grid.json").read_text())
    refine = json.loads((tuning / "refine/refine.json").read_text())
    cfg = bench_config(tmp_path, tiny_data)
    for m in ("sop", "dino", "ibot"):
        grid_choice = refine["points"][[p["method"] for p in refine["points"]].index(m)]
        assert {k: grid_choice[k] for k in ("base_lr", "teacher_temp", "koleo_weight")} == {
            k: grid["choice"][m][k] for k in ("base_lr", "teacher_temp", "koleo_weight")
        }, m  # stage 3 started from the committed grid's choice, its best point
        assert grid["choice"][m] == max(
            (p for p in grid["points"] if p["method"] == m), key=lambda p: p["knn_top1"]
        )
        mine = [p for p in refine["points"] if p["method"] == m]
        choice = refine["choice"][m]
        assert choice == max(mine, key=lambda p: p["knn_top1"])
        assert (cfg[m]["optim"]["base_lr"], cfg[m]["teacher_temp"], cfg[m]["koleo_weight"]) == pytest.approx(
            (choice["base_lr"], choice["teacher_temp"], choice["koleo_weight"])
        ), m


def test_recipe_shared_gives_every_method_one_setting(tmp_path: Path, tiny_data: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data, ["recipe=shared"])
    assert cfg["recipe"] == "shared"
    assert cfg["sop"]["teacher_temp"] == cfg["temps"]["teacher_temp"] == cfg["dino"]["teacher_temp"]
    assert cfg["sop"]["anchor_keep"] == 1.0 and cfg["sop"]["memory_view"] == 0
    shared = MaskConfig.from_mapping(cfg["masks"])
    assert method_settings(cfg, "sop").masks == method_settings(cfg, "ibot").masks == shared
    for m in ("sop", "dino", "ibot"):  # no tuned values: the shared lr, no KoLeo, the top-level temperatures
        assert cfg[m]["optim"]["base_lr"] is None and cfg[m]["koleo_weight"] == 0.0
    for key in cfg["temps"]:
        assert cfg["sop"][key] == cfg["dino"][key] == cfg["ibot"][key] == cfg["temps"][key], key


@pytest.mark.parametrize("method", ["sop", "dino", "ibot"])
def test_teacher_is_deterministic_while_the_student_drops_paths(
    method: str, tmp_path: Path, tiny_data: Path
) -> None:
    # depth 2: timm spreads drop path linearly over the blocks, 0 for the first
    module = _module(tmp_path, tiny_data, method, ["model.drop_path_rate=0.5", "model.depth=2"])
    module.train()  # what Lightning does at fit start
    assert module.student.training and not module.teacher.training
    assert not any(t.training for _, t in module.objective.momentum_pairs())
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        t1, t2 = module.teacher(x)[0], module.teacher(x)[0]
        s1, s2 = module.student(x)[0], module.student(x)[0]
    assert torch.equal(t1, t2)
    assert not torch.equal(s1, s2)  # drop path is on in the student: the check above can fail
    with torch.no_grad():
        e1, e2 = module.objective.teacher_embedding(t1), module.objective.teacher_embedding(t1)
    assert torch.equal(e1, e2) and torch.allclose(e1.norm(dim=-1), torch.ones(8), atol=1e-5)


def _fit(module: BenchModule, steps: int) -> None:
    images = torch.randint(0, 255, (16 * steps, 1, 28, 28), dtype=torch.uint8)
    data = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=16)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)


@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_prototype_layer_is_frozen_for_its_fraction_of_the_run(
    method: str, tmp_path: Path, tiny_data: Path
) -> None:
    def last_layer(fraction: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        module = _module(tmp_path, tiny_data, method, [f"{method}.freeze_last_layer_fraction={fraction}"], 3)
        before = {k: v.clone() for k, v in module.objective.student_head.last_layer.state_dict().items()}
        _fit(module, 3)
        return before, module.objective.student_head.last_layer.state_dict()

    before, after = last_layer(1.0)  # frozen for all 3 steps
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = last_layer(0.0)  # never frozen: the same check fails
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_learning_rate_scales_with_batch_and_weight_decay_follows_a_cosine(
    tmp_path: Path, tiny_data: Path
) -> None:
    module = _module(
        tmp_path, tiny_data, "dino", ["optim.base_lr=1e-3", "dino.optim.base_lr=null"], steps=100
    )
    assert module.learning_rate() == pytest.approx(1e-3 * 16 / 256)  # TINY_BENCH batch 16, one process
    assert module.weight_decay(0) == pytest.approx(0.04) and module.weight_decay(100) == pytest.approx(0.4)
    assert 0.04 < module.weight_decay(50) < 0.4
    tuned = _module(tmp_path, tiny_data, "dino", ["optim.base_lr=1e-3", "dino.optim.base_lr=2e-3"])
    assert tuned.learning_rate() == pytest.approx(2e-3 * 16 / 256)  # a method's own optim wins


def test_gradients_are_clipped_per_parameter(tmp_path: Path, tiny_data: Path) -> None:
    module = _module(tmp_path, tiny_data, "sop", ["optim.clip_grad=3.0"])
    opt = module.configure_optimizers()["optimizer"]
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 100.0 if i % 2 else 1e-3)
    small = [p.grad.clone() for i, p in enumerate(params) if not i % 2]
    module.on_before_optimizer_step(opt)
    assert all(float(p.grad.norm()) <= 3.0 + 1e-4 for p in params)
    assert all(float(p.grad.norm()) == pytest.approx(3.0, rel=1e-4) for i, p in enumerate(params) if i % 2)
    assert all(torch.equal(p.grad, g) for p, g in zip([p for i, p in enumerate(params) if not i % 2], small))


def test_holdout_scores_on_the_last_training_images_and_never_reads_the_test_set(
    tmp_path: Path, tiny_data: Path
) -> None:
    from sop_plugin.bench.inputs import load_data

    full_train, test = load_data(bench_settings(bench_config(tmp_path, tiny_data)))
    train, held = load_data(bench_settings(bench_config(tmp_path, tiny_data, ["eval.holdout=20"])))
    assert len(train) == len(full_train) - 20 and len(held) == 20
    assert torch.equal(held.images, full_train.images[-20:]) and torch.equal(
        train.images, full_train.images[:-20]
    )
    assert not torch.equal(held.images, test.images[:20])


def test_recipe_summary_says_what_each_method_trained_with(tmp_path: Path, tiny_data: Path) -> None:
    extra = [
        "sop.optim.base_lr=null",
        "sop.koleo_weight=0",
        "dino.teacher_temp=0.07",
        "dino.koleo_weight=0.2",
        "dino.optim.base_lr=2e-3",
    ]
    cfg = bench_config(tmp_path, tiny_data, extra)
    batch = cfg["train"]["batch_size"]
    sop = recipe_summary(method_settings(cfg, "sop"), 100, batch)
    dino = recipe_summary(method_settings(cfg, "dino"), 100, 2 * batch)  # two processes
    assert (
        sop["teacher_temp"] == "0.04"
        and sop["masks"] == "p 1, ratio 0.3-0.3"
        and "anchor_keep 0.5" in sop["own"]
    )
    assert (
        sop["peak_lr"] == f"{5e-4 * 16 / 256:.3g}" and sop["koleo_weight"] == "0"
    )  # the shared optim.base_lr
    assert (
        dino["teacher_temp"] == "0.04 -> 0.07" and dino["masks"] == "none" and dino["koleo_weight"] == "0.2"
    )
    assert dino["peak_lr"] == f"{2e-3 * 32 / 256:.3g}" and "norm_last_layer False" in dino["own"]
    assert "last layer frozen 1 steps" in dino["own"]  # 1 % of 100 steps


def test_gpu_profiles_do_not_inherit_the_cpu_tuned_learning_rate(tmp_path: Path, tiny_data: Path) -> None:
    """The tuned lr belongs to the CPU mini ViT: `gpu` keeps its own shared lr, `full` the authors' ViT-S
    recipe as it is (lr 5e-4, no KoLeo, DINO/iBOT temperature 0.04 -> 0.07)."""
    gpu = bench_config(
        tmp_path, tiny_data, ["profile=gpu", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    )
    full = bench_config(
        tmp_path, tiny_data, ["profile=full", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    )
    for m in ("sop", "dino", "ibot"):
        batch = gpu["train"]["batch_size"]
        assert (
            recipe_summary(method_settings(gpu, m), 10, batch)["peak_lr"] == f"{2e-3 * batch / 256:.3g}"
            and gpu[m]["koleo_weight"] == 0.1
        )
        assert full[m]["optim"]["base_lr"] is None and full[m]["koleo_weight"] == 0.0
        full_batch = full["train"]["batch_size"]
        assert (
            recipe_summary(method_settings(full, m), 10, full_batch)["peak_lr"]
            == f"{5e-4 * full_batch / 256:.3g}"
        )
    assert full["dino"]["teacher_temp"] == full["ibot"]["teacher_temp"] == 0.07
    assert full["sop"]["teacher_temp"] == 0.04  # SOP's authors: constant 0.04
