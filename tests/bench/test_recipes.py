"""Each method's authors' recipe: deterministic teacher, last-layer freeze, optimisation, recipe=shared."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sop_plugin.bench.module import BenchModule, method_masks
from tests.tinydata import bench_config


def _module(tmp_path: Path, data: Path, method: str, extra: list[str] | None = None, steps: int = 10) -> BenchModule:
    return BenchModule(bench_config(tmp_path, data, extra), method, 1, (0.5,), (0.5,), total_steps=steps)


def test_authors_recipe_is_the_default(tmp_path: Path, tiny_data: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data)
    assert cfg["recipe"] == "authors"
    sop = cfg["sop"]
    assert sop["teacher_temp"] == sop["warmup_teacher_temp"] == 0.04  # constant, class and patch level
    assert sop["anchor_keep"] == 0.5 and sop["memory_view"] == 1
    assert method_masks(cfg, "sop") == {"prob": 1.0, "ratio": [0.3, 0.3], "min_block": 2}
    assert method_masks(cfg, "ibot")["prob"] == 0.5 and method_masks(cfg, "ibot")["ratio"] == [0.1, 0.5]
    for m in ("dino", "ibot"):
        assert cfg[m]["head"]["norm_last_layer"] is False and cfg[m]["head"]["freeze_last_layer_fraction"] > 0
        assert (cfg[m]["temps"]["warmup_teacher"], cfg[m]["temps"]["teacher"]) == (0.04, 0.07)
    assert cfg["model"]["drop_path_rate"] == 0.1 and cfg["optim"]["clip_grad"] == 3.0


def test_recipe_shared_gives_every_method_one_setting(tmp_path: Path, tiny_data: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data, ["recipe=shared"])
    assert cfg["recipe"] == "shared"
    assert cfg["sop"]["teacher_temp"] == cfg["temps"]["teacher"] == cfg["dino"]["temps"]["teacher"]
    assert cfg["sop"]["anchor_keep"] == 1.0 and cfg["sop"]["memory_view"] == 0
    assert method_masks(cfg, "sop") == method_masks(cfg, "ibot") == cfg["masks"]


@pytest.mark.parametrize("method", ["sop", "dino", "ibot"])
def test_teacher_is_deterministic_while_the_student_drops_paths(method: str, tmp_path: Path, tiny_data: Path) -> None:
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
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data)


@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_prototype_layer_is_frozen_for_its_fraction_of_the_run(method: str, tmp_path: Path, tiny_data: Path) -> None:
    def last_layer(fraction: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        module = _module(tmp_path, tiny_data, method, [f"{method}.head.freeze_last_layer_fraction={fraction}"], 3)
        before = {k: v.clone() for k, v in module.objective.student_head.last_layer.state_dict().items()}
        _fit(module, 3)
        return before, module.objective.student_head.last_layer.state_dict()

    before, after = last_layer(1.0)  # frozen for all 3 steps
    assert all(torch.equal(before[k], after[k]) for k in before)
    before, after = last_layer(0.0)  # never frozen: the same check fails
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_learning_rate_scales_with_batch_and_weight_decay_follows_a_cosine(tmp_path: Path, tiny_data: Path) -> None:
    module = _module(tmp_path, tiny_data, "dino", ["optim.base_lr=1e-3"], steps=100)
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
    from sop_plugin.bench.runner import load_data

    full_train, test = load_data(bench_config(tmp_path, tiny_data))
    train, held = load_data(bench_config(tmp_path, tiny_data, ["eval.holdout=20"]))
    assert len(train) == len(full_train) - 20 and len(held) == 20
    assert torch.equal(held.images, full_train.images[-20:]) and torch.equal(train.images, full_train.images[:-20])
    assert not torch.equal(held.images, test.images[:20])


def test_recipe_summary_says_what_each_method_trained_with(tmp_path: Path, tiny_data: Path) -> None:
    from sop_plugin.bench.module import recipe_summary

    cfg = bench_config(tmp_path, tiny_data, ["dino.koleo_weight=0.1", "dino.optim.base_lr=2e-3"])
    sop, dino = recipe_summary(cfg, "sop"), recipe_summary(cfg, "dino", world=2)
    assert sop["teacher_temp"] == "0.04" and sop["masks"] == "p 1, ratio 0.3-0.3" and "anchor_keep 0.5" in sop["own"]
    assert sop["peak_lr"] == f"{5e-4 * 16 / 256:.3g}" and sop["koleo_weight"] == "0"
    assert dino["teacher_temp"] == "0.04 -> 0.07" and dino["masks"] == "none" and dino["koleo_weight"] == "0.1"
    assert dino["peak_lr"] == f"{2e-3 * 32 / 256:.3g}" and "norm_last_layer False" in dino["own"]
