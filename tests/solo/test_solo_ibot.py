"""iBOT as a solo-learn method, through the protocol solo-learn tests its own methods with.

solo-learn's ``tests/methods`` check, per method: the cfg defaults and checks of
``add_and_assert_specific_cfg``, ``learnable_params``, the shapes of ``forward`` and
``momentum_forward``, and a ``fast_dev_run`` fit (ResNet-18 and, for ViT methods, vit_tiny).
These tests do the same for ``METHODS["ibot"]`` with helpers of our own.
"""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from tests.solo.soloutil import ADAMW

PROTOTYPES = 512
NUM_CLASSES = 10
#: CPU-sized heads
SMALL_HEADS = {"num_prototypes": PROTOTYPES, "head_hidden_dim": 64, "dim": 32}


def ibot_cfg(backbone: str = "resnet18", size: int = 32, small_crops: int = 0, **method_kwargs):
    """A CPU-sized pretraining cfg as solo-learn's parse_cfg leaves it (struct off)."""
    kwargs = {"img_size": size, "patch_size": 8} if backbone.startswith("vit") else {}
    cfg = OmegaConf.create(
        {
            "name": "ibot-test",
            "method": "ibot",
            "backbone": {"name": backbone, "kwargs": kwargs},
            "method_kwargs": {**SMALL_HEADS, **method_kwargs},
            "momentum": {"base_tau": 0.99, "final_tau": 1.0},
            "data": {
                "dataset": "cifar10",
                "num_classes": NUM_CLASSES,
                "num_large_crops": 2,
                "num_small_crops": small_crops,
            },
            "optimizer": {**ADAMW, "batch_size": 4},
            "scheduler": {"name": "warmup_cosine", "warmup_epochs": 0},
            "knn_eval": {"enabled": True, "k": 3, "distance_func": "cosine"},
            "max_epochs": 2,
            "devices": 1,
            "accelerator": "cpu",
        }
    )
    OmegaConf.set_struct(cfg, False)
    return cfg


class _Crops(Dataset):
    """``(index, [crops...], label)`` like solo-learn's pretraining datasets; random pixels."""

    def __init__(self, sizes: list[int], n: int = 16) -> None:
        self.sizes, self.n = sizes, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(i)
        return i, [torch.randn(3, s, s, generator=gen) for s in self.sizes], i % NUM_CLASSES


class _Images(Dataset):
    def __init__(self, size: int, n: int = 10) -> None:
        self.size, self.n = size, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image = torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(100 + i))
        return image, i % NUM_CLASSES


def fast_dev_fit(model, cfg, sizes: list[int]):
    from lightning.pytorch import Trainer

    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg.max_epochs,
        fast_dev_run=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batch = cfg.optimizer.batch_size
    train = DataLoader(_Crops(sizes), batch_size=batch, drop_last=True)
    trainer.fit(model, train, DataLoader(_Images(sizes[0]), batch_size=batch))
    return trainer


def test_ibot_cfg_defaults_follow_the_authors_recipe():
    from sop_plugin.methods import IBOTConfig, MaskConfig
    from sop_plugin.solo.ibot_method import IBOT

    cfg = IBOT.add_and_assert_specific_cfg(ibot_cfg(num_prototypes=8192))
    mk = cfg.method_kwargs
    assert mk.num_prototypes == 8192 and mk.norm_last_layer is False
    assert (mk.warmup_teacher_temp, mk.teacher_temp, mk.student_temp) == (0.04, 0.07, 0.1)
    assert mk.warmup_teacher_temp_epochs == 30 and mk.center_momentum == 0.9
    assert mk.freeze_last_layer_epochs == 1 and mk.clip_grad == 3.0 and mk.mim_weight == 1.0
    settings = IBOT.parse(cfg)
    config, masks = settings.config, settings.masks
    assert config == IBOTConfig(head_hidden_dim=64, dim=32, num_prototypes=8192)
    assert masks == MaskConfig(prob=0.5, ratio=(0.1, 0.5), min_block=4)  # the authors' masks
    assert cfg.momentum.base_tau == 0.99  # solo-learn's BaseMomentumMethod defaults are kept


def test_ibot_masks_are_laid_over_the_authors():
    from sop_plugin.methods import MaskConfig
    from sop_plugin.solo.ibot_method import IBOT

    cfg = IBOT.add_and_assert_specific_cfg(ibot_cfg(masks={"prob": 0.25}))
    assert IBOT.parse(cfg).masks == MaskConfig(prob=0.25, ratio=(0.1, 0.5), min_block=4)


@pytest.mark.parametrize(
    ("method_kwargs", "message"),
    [
        ({"num_prototypes": 0}, "num_prototypes=0 must be >= 1"),
        ({"teacher_temp": 0.0}, "teacher_temp=0.0 must be > 0"),
        ({"masks": {"ratio": [0.5, 0.1]}}, "method_kwargs.masks:"),
        ({"masks": {"ratio": [0.5, 0.1]}}, "ratio=[0.5, 0.1] must satisfy 0 <= min <= max < 1"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite='ignore'"),
        ({"freeze_last_layer_epochs": 1, "freeze_last_layer_steps": 5}, "freeze_last_layer_steps, not both"),
        ({"num_prototype": 10}, "unknown iBOT setting(s) ['num_prototype']"),
        # solo-learn DINO's names are not iBOT's (docs/solo-learn.md, "Names")
        ({"teacher_temperature": 0.07}, "unknown iBOT setting(s) ['teacher_temperature']"),
        ({"freeze_last_layer": 1}, "unknown iBOT setting(s) ['freeze_last_layer']"),
        ({"mask_prob": 0.5}, "unknown iBOT setting(s) ['mask_prob']"),
    ],
)
def test_ibot_bad_cfg_raises_clear_errors(method_kwargs, message):
    from sop_plugin.solo.ibot_method import IBOT

    with pytest.raises(ValueError, match=r"invalid iBOT config \(method_kwargs\)") as info:
        IBOT.add_and_assert_specific_cfg(ibot_cfg(**method_kwargs))
    assert message in str(info.value)


def test_ibot_vit_params_forward_shapes_and_fast_dev_run():
    from solo.methods import METHODS

    import sop_plugin.solo  # noqa: F401

    cfg = ibot_cfg("vit_tiny", size=32, small_crops=2)
    model = METHODS["ibot"](cfg)
    groups = {g["name"]: list(g["params"]) for g in model.learnable_params}
    assert {"backbone", "classifier", "head", "mask_token"} <= set(groups)
    assert (model.head, model.momentum_head) in model.momentum_pairs
    assert model.use_mim and model.backbone.dynamic_img_size
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out["logits"].shape == (4, NUM_CLASSES) and out["feats"].shape == (4, model.features_dim)
    assert out["z"].shape == (4, PROTOTYPES)
    momentum = model.momentum_forward(x)
    assert momentum["feats"].shape == (4, model.features_dim)
    assert momentum["patches"].shape == (4, 16, model.features_dim)  # 32 px / patch 8 = 4x4 grid

    last_layer = [p.detach().clone() for p in model.head.last_layer.parameters()]
    trainer = fast_dev_fit(model, cfg, [32, 32, 16, 16])
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train_ibot_mim_loss"]) and float(metrics["train_ibot_mim_loss"]) > 0
    assert torch.isfinite(metrics["train_ibot_cls_loss"]) and "val_knn_acc1" in metrics
    assert torch.isfinite(metrics["train_ibot_loss"]) and "ibot_teacher_temp" in metrics
    assert "train_ibot_koleo_loss" not in metrics  # koleo_weight 0: no KoLeo term
    # freeze_last_layer_epochs=1: the prototypes do not move in the first epoch (converted to steps
    # when training starts; fast_dev_run's one step is in the first epoch)
    assert model.method.cfg.freeze_last_layer_steps >= trainer.global_step == 1
    for before, after in zip(last_layer, model.head.last_layer.parameters(), strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("backbone", ["vit_tiny", "resnet18"])
def test_ibot_momentum_forward_gives_the_teacher_head_output(backbone):
    """solo-learn's protocol (its DINO too): ``momentum_forward`` returns ``z``, the teacher head's output."""
    from sop_plugin.solo.ibot_method import IBOT

    model = IBOT(ibot_cfg(backbone, size=32))
    x = torch.randn(4, 3, 32, 32)
    momentum = model.momentum_forward(x)
    assert momentum["feats"].shape == (4, model.features_dim) and momentum["z"].shape == (4, PROTOTYPES)
    with torch.no_grad():
        assert torch.allclose(momentum["z"], model.momentum_head(momentum["feats"]))


def test_ibot_resnet_turns_the_patch_loss_off_with_a_warning(caplog):
    from solo.methods import METHODS

    import sop_plugin.solo  # noqa: F401

    cfg = ibot_cfg("resnet18")
    with caplog.at_level(logging.WARNING, logger="sop_plugin.solo.masked"):
        model = METHODS["ibot"](cfg)
    assert "iBOT's patch loss needs patch tokens" in caplog.text and not model.use_mim
    assert "mask_token" not in {g["name"] for g in model.learnable_params}
    x = torch.randn(4, 3, 32, 32)
    assert model(x)["z"].shape == (4, PROTOTYPES)
    trainer = fast_dev_fit(model, cfg, [32, 32])
    assert torch.isfinite(trainer.callback_metrics["train_ibot_cls_loss"])
    assert model.method.masks is None and not model.method.uses_masks
    assert float(trainer.callback_metrics["train_ibot_mim_loss"]) == 0.0  # no patch loss


def test_ibot_teacher_temperature_warms_up_per_step():
    from sop_plugin.solo.ibot_method import IBOT

    model = IBOT(ibot_cfg("resnet18"))
    model.method.set_step_schedule(10)  # what on_train_start makes of warmup_teacher_temp_epochs
    temp = model.method.teacher_temperature
    assert temp(0) == pytest.approx(0.04) and temp(5) == pytest.approx(0.055)
    assert temp(10) == pytest.approx(0.07) and temp(1000) == pytest.approx(0.07)


def test_ibot_nonfinite_loss_stops_naming_the_term(monkeypatch):
    from lightly.loss import DINOLoss

    from sop_plugin.runtime import NonFiniteLossError
    from sop_plugin.solo.ibot_method import IBOT

    forward = DINOLoss.forward
    monkeypatch.setattr(DINOLoss, "forward", lambda self, *a, **k: forward(self, *a, **k) * float("nan"))
    cfg = ibot_cfg("resnet18")
    expected = r"non-finite iBOT loss at step 0: .*class loss nan \(non-finite\)"
    with pytest.raises(NonFiniteLossError, match=expected):
        fast_dev_fit(IBOT(cfg), cfg, [32, 32])


def test_ibot_step_without_masked_patches_has_zero_patch_loss_and_keeps_the_centre():
    """No image masked (``masks.prob`` 0): the [CLS] loss trains, the patch loss is 0, the patch centre
    stays."""
    from sop_plugin.solo.ibot_method import IBOT

    cfg = ibot_cfg("vit_tiny", size=32, masks={"prob": 0.0})
    model = IBOT(cfg)
    masks = model._draw_masks([torch.zeros(3, 3, 32, 32)] * 2, batch_idx=0)
    assert model.use_mim and not any(bool(m.any()) for m in masks)  # nothing masked, nothing forced
    patch_centre = model.method.patch_loss.center.center.detach().clone()
    cls_centre = model.method.cls_loss.center.detach().clone()
    metrics = fast_dev_fit(model, cfg, [32, 32]).callback_metrics
    assert torch.isfinite(metrics["train_ibot_loss"]) and torch.isfinite(metrics["train_ibot_cls_loss"])
    assert float(metrics["train_ibot_mim_loss"]) == 0.0
    assert torch.equal(model.method.patch_loss.center.center, patch_centre)
    assert not torch.equal(model.method.cls_loss.center, cls_centre)  # the step did run
