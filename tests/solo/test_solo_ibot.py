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

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

PROTOTYPES = 512
NUM_CLASSES = 10


def ibot_cfg(backbone: str = "resnet18", size: int = 32, small_crops: int = 0, **method_kwargs):
    """A CPU-sized pretraining cfg as solo-learn's parse_cfg leaves it (struct off)."""
    kwargs = {"img_size": size, "patch_size": 8} if backbone.startswith("vit") else {}
    cfg = OmegaConf.create(
        {
            "name": "ibot-test",
            "method": "ibot",
            "backbone": {"name": backbone, "kwargs": kwargs},
            "method_kwargs": {
                "num_prototypes": PROTOTYPES,
                "proj_hidden_dim": 64,
                "proj_output_dim": 32,
                **method_kwargs,
            },
            "momentum": {"base_tau": 0.99, "final_tau": 1.0},
            "data": {
                "dataset": "cifar10",
                "num_classes": NUM_CLASSES,
                "num_large_crops": 2,
                "num_small_crops": small_crops,
            },
            "optimizer": {"name": "adamw", "batch_size": 4, "lr": 1e-3, "classifier_lr": 1e-3, "weight_decay": 0.0},
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
        return torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(100 + i)), i % NUM_CLASSES


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
    from sop_plugin.solo.ibot_method import IBOT

    cfg = IBOT.add_and_assert_specific_cfg(ibot_cfg(num_prototypes=8192))
    mk = cfg.method_kwargs
    assert mk.num_prototypes == 8192 and mk.norm_last_layer is False
    assert (mk.warmup_teacher_temperature, mk.teacher_temperature) == (0.04, 0.07)
    assert mk.freeze_last_layer == 1 and mk.clip_grad == 3.0 and mk.mim_weight == 1.0
    assert mk.mask_prob == 0.5 and list(mk.mask_ratio) == [0.1, 0.5]
    assert cfg.momentum.base_tau == 0.99  # solo-learn's BaseMomentumMethod defaults are kept


@pytest.mark.parametrize(
    ("method_kwargs", "message"),
    [
        ({"num_prototypes": 0}, "num_prototypes=0 must be >= 1"),
        ({"teacher_temperature": 0.0}, "teacher_temperature=0.0 must be > 0"),
        ({"mask_ratio": [0.5, 0.1]}, "mask settings"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite='ignore'"),
        ({"num_prototype": 10}, r"unknown method_kwargs \['num_prototype'\]"),
    ],
)
def test_ibot_bad_cfg_raises_clear_errors(method_kwargs, message):
    from sop_plugin.solo.ibot_method import IBOT

    with pytest.raises(ValueError, match=message):
        IBOT.add_and_assert_specific_cfg(ibot_cfg(**method_kwargs))


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
    assert momentum["feats"].shape == (4, model.features_dim) and momentum["z"].shape == (4, PROTOTYPES)
    assert momentum["patches"].shape == (4, 16, model.features_dim)  # 32 px / patch 8 = 4x4 grid

    last_layer = [p.detach().clone() for p in model.head.last_layer.parameters()]
    trainer = fast_dev_fit(model, cfg, [32, 32, 16, 16])
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train_ibot_patch_loss"]) and float(metrics["train_ibot_patch_loss"]) > 0
    assert torch.isfinite(metrics["train_ibot_cls_loss"]) and "val_knn_acc1" in metrics
    # freeze_last_layer=1: the prototypes do not move in the first epoch
    for before, after in zip(last_layer, model.head.last_layer.parameters(), strict=True):
        assert torch.equal(before, after)


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
    assert model.momentum_forward(x)["z"].shape == (4, PROTOTYPES)
    trainer = fast_dev_fit(model, cfg, [32, 32])
    assert torch.isfinite(trainer.callback_metrics["train_ibot_cls_loss"])
    assert "train_ibot_patch_loss" not in trainer.callback_metrics


def test_ibot_teacher_temperature_warms_up_per_step():
    from sop_plugin.solo.ibot_method import IBOT

    model = IBOT(ibot_cfg("resnet18"))
    model.warmup_steps = 10
    assert model.teacher_temp(0) == pytest.approx(0.04) and model.teacher_temp(5) == pytest.approx(0.055)
    assert model.teacher_temp(10) == pytest.approx(0.07) and model.teacher_temp(1000) == pytest.approx(0.07)


def test_ibot_nonfinite_loss_stops_naming_the_term(monkeypatch):
    from lightly.loss import DINOLoss

    from sop_plugin.runtime import NonFiniteLossError
    from sop_plugin.solo.ibot_method import IBOT

    forward = DINOLoss.forward
    monkeypatch.setattr(DINOLoss, "forward", lambda self, *a, **k: forward(self, *a, **k) * float("nan"))
    cfg = ibot_cfg("resnet18")
    with pytest.raises(NonFiniteLossError, match=r"non-finite iBOT loss at step 0: the \[CLS\] loss is nan"):
        fast_dev_fit(IBOT(cfg), cfg, [32, 32])


def test_ibot_masks_always_hold_a_masked_patch():
    from sop_plugin.solo.ibot_method import IBOT

    model = IBOT(ibot_cfg("vit_tiny", size=32, mask_prob=0.0))  # no image masked by the draw itself
    masks = model._draw_masks([torch.zeros(3, 3, 32, 32)] * 2, batch_idx=0)
    assert int(sum(m.sum() for m in masks)) == 1 and bool(masks[0][0, 0])
