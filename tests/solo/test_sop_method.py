"""The SOP solo-learn module: parameters, momentum pairs, masked ViT, checkpoint layout."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch
from omegaconf import OmegaConf

from sop_plugin.solo.sop_method import SOP
from tests.solo.soloutil import ADAMW

SMALL = {
    "head_hidden_dim": 64,
    "dim": 32,
    "class_memory_size": 256,
    "class_num_anchors": 8,
    "class_num_supports": 2,
    "patch_memory_size": 256,
    "patch_num_anchors": 16,
}


def build(backbone="vit_tiny", kwargs=None, method_kwargs=None, small_crops=2):
    crops = {"num_large_crops": 2, "num_small_crops": small_crops}
    cfg = OmegaConf.create(
        {
            "name": "test",
            "method": "sop",
            "backbone": {"name": backbone, "kwargs": kwargs or {}},
            "method_kwargs": {**SMALL, **(method_kwargs or {})},
            "momentum": {"base_tau": 0.99, "final_tau": 1.0},
            "data": {"dataset": "custom", "num_classes": 5, **crops},
            "optimizer": {**ADAMW, "batch_size": 4},
            "scheduler": {"name": "none"},
            "max_epochs": 1,
            "devices": 1,
        }
    )
    OmegaConf.set_struct(cfg, False)
    return SOP(cfg)


@pytest.fixture(scope="module")
def vit_model():
    torch.manual_seed(0)
    return build(kwargs={"img_size": 16, "patch_size": 4})


def test_learnable_params_and_momentum_pairs(vit_model):
    m = vit_model
    groups = {g["name"]: list(g["params"]) for g in m.learnable_params}
    assert {"backbone", "classifier", "head", "mask_token"} <= set(groups)
    assert groups["mask_token"] == [m.mask_token]
    assert len(groups["head"]) == len(list(m.head.parameters()))
    assert m.head is m.method.student_head and m.momentum_head is m.method.teacher_head
    pairs = m.momentum_pairs
    assert (m.backbone, m.momentum_backbone) in pairs and (m.head, m.momentum_head) in pairs
    # the teacher starts as a copy of the student and is not trained by the optimizer
    for a, b in zip(m.head.parameters(), m.momentum_head.parameters(), strict=True):
        assert torch.equal(a, b) and not b.requires_grad
    assert m.use_mim and m.backbone.dynamic_img_size  # local crops given -> dynamic size


def test_masked_forward_matches_backbone_and_masks_change_patches(vit_model):
    m = vit_model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        plain = m.backbone(x)
        feats, patches = m.encode(x, torch.zeros(3, 16, dtype=torch.bool))
        teacher = m.momentum_forward(x)
        mask = torch.zeros(3, 16, dtype=torch.bool)
        mask[0, :8] = True
        masked, _ = m.encode(x, mask)
        z = m(x)["z"]
    assert torch.allclose(feats, plain, atol=1e-5)
    assert torch.allclose(teacher["feats"], plain, atol=1e-5)  # same weights at init
    assert patches.shape == (3, 16, m.backbone.embed_dim)
    assert z.shape == (3, 32) and torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(masked[0], plain[0], atol=1e-4)  # image 0 masked
    assert torch.allclose(masked[1:], plain[1:], atol=1e-5)  # others untouched
    assert "patches" not in teacher  # no teacher patch tokens outside training
    m.train()


def test_masks_are_deterministic_per_step_and_sized_per_crop(vit_model):
    views = [torch.zeros(6, 3, 16, 16), torch.zeros(6, 3, 16, 16)]
    a = vit_model._draw_masks(views, batch_idx=0)
    b = vit_model._draw_masks(views, batch_idx=0)
    c = vit_model._draw_masks(views, batch_idx=1)
    assert [t.shape for t in a] == [(6, 16), (6, 16)] and a[0].dtype == torch.bool
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert vit_model.patch_grid(torch.zeros(1, 3, 8, 8)) == (2, 2)


def test_checkpoint_holds_memories_once_and_backbone_loads_like_solo_linear(vit_model):
    sd = vit_model.state_dict()
    memories = {"method.objective.class_memory.bank", "method.objective.patch_memory.bank"}
    assert {*memories, "mask_token"} <= sd.keys()
    assert sd["method.objective.class_memory.bank"].shape == (256, 32)
    assert not any(".vit." in k for k in sd)  # the lightly wrappers add no copy of the ViT
    # the heads are the method's, stored once (head / momentum_head only name them for solo-learn)
    assert any(k.startswith("method.student_head.") for k in sd) and any(
        k.startswith("method.teacher_head.") for k in sd
    )
    assert not any(k.startswith(("head.", "momentum_head.", "objective.")) for k in sd)
    # solo-learn's main_linear: keep keys with "backbone", strip "backbone.", load non-strictly
    from solo.backbones import vit_tiny

    fresh = vit_tiny("sop", img_size=16, patch_size=4)
    picked = {k.replace("backbone.", ""): v for k, v in sd.items() if "backbone" in k}
    missing, _ = fresh.load_state_dict(picked, strict=False)
    assert missing == []
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[f"backbone.{k}"]), k


def test_resnet_backbone_disables_sop_mim_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sop_plugin.solo.masked"):
        m = build(backbone="resnet18", small_crops=0)
    assert not m.use_mim
    assert "SOP-MIM needs patch tokens" in caplog.text
    assert "mask_token" not in {g["name"] for g in m.learnable_params}
    assert m.encode(torch.randn(2, 3, 32, 32))[1] is None
    assert m.eval()(torch.randn(2, 3, 32, 32))["z"].shape == (2, 32)


def test_vit_without_mim_has_no_mask_token():
    m = build(kwargs={"img_size": 16, "patch_size": 4}, method_kwargs={"mim_weight": 0.0})
    assert not m.use_mim and not hasattr(m, "mask_token")


class _Payload:
    """A pickled object outside the safe types (stands in for a malicious one)."""


def test_bad_input_solo_linear_refuses_unsafe_checkpoint_unless_trusted(vit_model, tmp_path):
    import warnings

    from omegaconf import OmegaConf
    from solo.backbones import vit_tiny

    from sop_plugin.runtime import CheckpointError, UnsafeCheckpointWarning
    from sop_plugin.solo.pretrained import load_backbone_weights

    state = {k: v for k, v in vit_model.state_dict().items() if k.startswith("backbone.")}
    # solo-learn style: OmegaConf hyper-parameters load with the safe loader
    safe = tmp_path / "safe.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": OmegaConf.create({"cfg": {"name": "x"}})}, safe)
    load_backbone_weights(vit_tiny("sop", img_size=16, patch_size=4), safe)

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": state, "extra": _Payload()}, unsafe)
    with pytest.raises(CheckpointError, match=r"_Payload.*set trust_checkpoint=true"):
        load_backbone_weights(vit_tiny("sop", img_size=16, patch_size=4), unsafe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_backbone_weights(vit_tiny("sop", img_size=16, patch_size=4), unsafe, trusted=True)
    assert any(issubclass(w.category, UnsafeCheckpointWarning) for w in caught)

    with pytest.raises(ValueError, match="must be a .ckpt, .pth or .pt file"):
        load_backbone_weights(vit_tiny("sop", img_size=16, patch_size=4), tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_weights(vit_tiny("sop", img_size=16, patch_size=4), tmp_path / "missing.ckpt")


def test_bad_input_solo_trust_checkpoint_must_be_bool():
    from omegaconf import OmegaConf

    from sop_plugin.solo.pretrained import trust_checkpoint

    assert trust_checkpoint(OmegaConf.create({})) is False
    assert trust_checkpoint(OmegaConf.create({"trust_checkpoint": True})) is True
    with pytest.raises(ValueError, match=r"trust_checkpoint='yes' must be True or False"):
        trust_checkpoint(OmegaConf.create({"trust_checkpoint": "yes"}))
