"""SOP's method_kwargs: defaults, mapping onto SOPConfig, validation, shipped configs."""

from __future__ import annotations

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

from omegaconf import OmegaConf

from sop_plugin.core import SOPConfig
from sop_plugin.methods import IBOTConfig, MaskConfig
from sop_plugin.methods.ibot import IBOTMethod
from sop_plugin.methods.sop import SOPMethod
from sop_plugin.runtime import num_devices
from sop_plugin.solo.settings import SHARED_KEYS, global_batch_size
from sop_plugin.solo.sop_method import METHOD_KWARGS_DEFAULTS, SOP
from tests.solo.soloutil import ADAMW, SCRIPTS, compose


def sop_settings(cfg):
    """(SOPConfig, MaskConfig | None) of a filled cfg, as the SOP module builds them."""
    settings = SOP.parse(cfg)
    return settings.config, settings.masks


def make_cfg(method_kwargs=None, backbone="vit_tiny", small_crops=0, large_crops=2, **top):
    crops = {"num_large_crops": large_crops, "num_small_crops": small_crops}
    cfg = {
        "name": "test",
        "method": "sop",
        "backbone": {"name": backbone, "kwargs": {}},
        "method_kwargs": method_kwargs or {},
        "momentum": {"base_tau": 0.99, "final_tau": 1.0},
        "data": {"dataset": "custom", "num_classes": 5, **crops},
        "optimizer": {**ADAMW, "batch_size": 8},
        "scheduler": {"name": "none"},
        "max_epochs": 1,
        "devices": 1,
        "seed": 7,
    }
    cfg.update(top)
    cfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


def test_defaults_are_filled_and_follow_sopconfig():
    cfg = SOP.add_and_assert_specific_cfg(make_cfg())
    for key, value in METHOD_KWARGS_DEFAULTS.items():
        got = cfg.method_kwargs[key]
        assert (OmegaConf.to_object(got) if OmegaConf.is_config(got) else got) == value, key
    assert cfg.method_kwargs.clip_grad == 3.0 and cfg.method_kwargs.masks == {}
    sop_cfg, masks = sop_settings(cfg)
    expected = SOPConfig(seed=7)  # seed: None -> the run's seed
    assert sop_cfg == expected
    # no mask settings: SOP's authors' masks (every global view, ratio 0.3, blocks of >= 4 patches)
    assert masks == SOPMethod.default_masks == MaskConfig(prob=1.0, ratio=(0.3, 0.3), min_block=4)
    # solo-learn's own defaults are there too
    assert cfg.momentum.classifier is False and cfg.knn_eval.enabled is False


def test_method_kwargs_reach_the_objective():
    mk = {
        "dim": 128,
        "head_hidden_dim": 512,
        "head_num_layers": 2,
        "class_memory_size": 4096,
        "class_num_anchors": 32,
        "class_num_supports": 4,
        "patch_num_supports": 2,
        "student_temp": 0.2,
        "teacher_temp": 0.05,
        "warmup_teacher_temp": 0.03,
        "mim_weight": 0.5,
        "koleo_weight": 0.1,
        "retrieval": "faiss",
        "seed": 3,
        "masks": {"ratio": [0.2, 0.4]},
    }
    sop_cfg, masks = sop_settings(SOP.add_and_assert_specific_cfg(make_cfg(mk)))
    assert sop_cfg.dim == 128 and sop_cfg.class_memory_size == 4096
    assert (sop_cfg.head_hidden_dim, sop_cfg.head_num_layers) == (512, 2)
    assert (sop_cfg.class_num_anchors, sop_cfg.class_num_supports) == (32, 4)
    assert sop_cfg.patch_num_supports == 2
    assert (sop_cfg.student_temp, sop_cfg.teacher_temp, sop_cfg.warmup_teacher_temp) == (0.2, 0.05, 0.03)
    assert (sop_cfg.mim_weight, sop_cfg.koleo_weight) == (0.5, 0.1)
    assert sop_cfg.retrieval == "faiss" and sop_cfg.seed == 3
    # masks given in part are laid over SOP's authors' masks
    assert masks == MaskConfig(prob=1.0, ratio=(0.2, 0.4), min_block=4)


BAD_RATIO_TYPE = "ratio=[0.1, 0.2, 0.3] must be of type tuple[float, float]"


@pytest.mark.parametrize(
    ("method_kwargs", "top", "message"),
    [
        ({"class_num_anchor": 8}, {}, "unknown SOP setting(s) ['class_num_anchor']"),
        ({"masks": {"prob": 1.5}}, {}, "prob=1.5 must be in [0, 1]"),
        ({"masks": {"ratio": [0.6, 0.2]}}, {}, "ratio=[0.6, 0.2] must satisfy 0 <= min <= max < 1"),
        ({"masks": {"ratio": [0.1, 0.2, 0.3]}}, {}, BAD_RATIO_TYPE),
        ({"masks": {"min_block": 0}}, {}, "min_block=0 must be >= 1"),
        ({"masks": {"probability": 0.5}}, {}, "unknown masks setting(s) ['probability']"),
        ({"mask_prob": 0.5}, {}, "unknown SOP setting(s) ['mask_prob']"),  # the old flat mask keys
        ({"dim": 12.5}, {}, "dim=12.5 must be of type int"),
        ({"head_num_layers": 0}, {}, "head_num_layers=0 must be >= 1"),
        ({"class_memory_size": 100}, {}, "exceeds class_memory_size=100"),
        (
            {"patch_memory_size": 16, "patch_num_anchors": 4},
            {"devices": [0, 1, 2]},
            "global batch 24 exceeds patch_memory_size=16",
        ),
        ({"student_temp": 0.0}, {}, "student_temp=0.0 must be > 0"),
        ({"anchor_selection": "nope"}, {}, "anchor_selection"),
        ({"retrieval": "nope"}, {}, "retrieval"),
        ({"warmup_teacher_temp_epochs": -1}, {}, "warmup_teacher_temp_epochs"),
        (
            {"warmup_teacher_temp_epochs": 2, "warmup_teacher_temp_steps": 10},
            {},
            "warmup_teacher_temp_epochs or warmup_teacher_temp_steps, not both",
        ),
        ({"clip_grad": -1.0}, {}, "clip_grad"),
    ],
)
def test_invalid_settings_raise_clear_errors(method_kwargs, top, message):
    with pytest.raises(ValueError, match="invalid SOP config") as info:
        SOP.add_and_assert_specific_cfg(make_cfg(method_kwargs, **top))
    assert message in str(info.value)
    if "masks" in method_kwargs:
        assert "method_kwargs.masks:" in str(info.value)


def test_needs_two_global_crops():
    with pytest.raises(ValueError, match="exactly 2 global"):
        SOP.add_and_assert_specific_cfg(make_cfg(large_crops=3))


def test_vit_with_local_crops_gets_dynamic_img_size():
    cfg = SOP.add_and_assert_specific_cfg(make_cfg(small_crops=4))
    assert cfg.backbone.kwargs.dynamic_img_size is True
    cfg = make_cfg(small_crops=4)
    cfg.backbone.kwargs.dynamic_img_size = False
    with pytest.raises(ValueError, match="dynamic_img_size"):
        SOP.add_and_assert_specific_cfg(cfg)
    cfg = SOP.add_and_assert_specific_cfg(make_cfg(backbone="resnet18", small_crops=4))
    assert "dynamic_img_size" not in cfg.backbone.kwargs


def test_device_counting():
    assert num_devices(OmegaConf.create({"d": [0, 1, 2]}).d) == 3  # a ListConfig
    assert global_batch_size(make_cfg(devices=[0, 1, 2], num_nodes=2)) == 8 * 3 * 2


SOLO_NAMES_OF_DINO = {
    "head_hidden_dim": "proj_hidden_dim",
    "dim": "proj_output_dim",
    "student_temp": "student_temperature",
    "warmup_teacher_temp": "warmup_teacher_temperature",
    "warmup_teacher_temp_epochs": "warmup_teacher_temperature_epochs",
    "clip_grad": "clip_grad",
}
#: SOP's authors keep the teacher at 0.04 throughout; DINO's warm up to 0.07 (each method its authors' recipe)
TEACHER_TEMPS = {"sop": 0.04, "dino": 0.07}


def test_method_kwargs_are_sopconfig_fields_plus_solo_keys():
    assert set(SHARED_KEYS) == {
        "masks",
        "warmup_teacher_temp_epochs",
        "clip_grad",
        "on_nonfinite",
        "max_consecutive_skips",
    }
    assert set(METHOD_KWARGS_DEFAULTS) == set(SOPConfig.field_names()) | set(SHARED_KEYS)
    assert METHOD_KWARGS_DEFAULTS["seed"] is None  # None: the run's seed
    assert not set(SHARED_KEYS) & set(SOPConfig.field_names())
    assert SOP.host_keys() == sorted(SHARED_KEYS)  # every other key is an SOPConfig field
    assert {k: METHOD_KWARGS_DEFAULTS[k] for k in SHARED_KEYS} == SHARED_KEYS
    assert SHARED_KEYS["clip_grad"] == 3.0


def _count_crops(cfg):
    big = cfg.augmentations[0].crop_size
    cfg.data.num_large_crops = sum(a.num_crops for a in cfg.augmentations if a.crop_size == big)
    cfg.data.num_small_crops = sum(a.num_crops for a in cfg.augmentations if a.crop_size != big)


@pytest.mark.parametrize("dataset", ["cifar", "imagenet-100", "imagenet", "fashion-mnist"])
def test_shipped_pretrain_configs_are_valid(dataset):
    from solo.methods import DINO

    folder = SCRIPTS / "pretrain" / dataset
    sop = compose(folder, "sop.yaml")
    _count_crops(sop)
    assert sop.method == "sop" and sop.data.num_large_crops == 2 and sop.data.num_small_crops > 0
    assert sop.wandb.enabled is False
    sop = SOP.add_and_assert_specific_cfg(sop)
    assert set(sop.method_kwargs) == set(METHOD_KWARGS_DEFAULTS)

    dino = compose(folder, "dino.yaml")
    _count_crops(dino)
    assert dino.method == "dino" and dino.data.num_small_crops == 0
    dino = DINO.add_and_assert_specific_cfg(dino)
    # matched settings: only the objective differs
    for key in ("backbone", "momentum", "optimizer", "scheduler", "max_epochs", "data"):
        a, b = (OmegaConf.to_object(c[key]) if OmegaConf.is_config(c[key]) else c[key] for c in (sop, dino))
        if key == "data":
            a.pop("num_small_crops")
            b.pop("num_small_crops")
        assert a == b, key
    # SOP's method_kwargs are SOPConfig's names; solo-learn's DINO has its own
    for sop_key, dino_key in SOLO_NAMES_OF_DINO.items():
        assert sop.method_kwargs[sop_key] == dino.method_kwargs[dino_key], sop_key
    temps = (sop.method_kwargs.teacher_temp, dino.method_kwargs.teacher_temperature)
    assert temps == tuple(TEACHER_TEMPS.values())
    assert OmegaConf.to_container(sop.augmentations)[:2] == OmegaConf.to_container(dino.augmentations)

    # the strictly matched pair: SOP on the global crops only
    sop_global = compose(folder, "sop.yaml", ["augmentations=global.yaml"])
    _count_crops(sop_global)
    assert sop_global.data.num_small_crops == 0


@pytest.mark.parametrize("dataset", ["cifar", "imagenet-100", "imagenet", "fashion-mnist"])
def test_shipped_linear_configs_match_pretraining(dataset):
    linear = compose(SCRIPTS / "linear" / dataset, "sop.yaml")
    pretrain = compose(SCRIPTS / "pretrain" / dataset, "sop.yaml")
    assert linear.pretrain_method == "sop"
    assert OmegaConf.to_container(linear.backbone) == OmegaConf.to_container(pretrain.backbone)
    assert linear.data.dataset == pretrain.data.dataset


#: the method knobs iBOT shares with solo-learn's DINO: iBOT's name (the shared vocabulary) -> DINO's
#: (solo-learn's own), same values in the shipped configs
IBOT_KEYS_OF_DINO = {
    "head_hidden_dim": "proj_hidden_dim",
    "dim": "proj_output_dim",
    "norm_last_layer": "norm_last_layer",
    "student_temp": "student_temperature",
    "teacher_temp": "teacher_temperature",
    "warmup_teacher_temp": "warmup_teacher_temperature",
    "warmup_teacher_temp_epochs": "warmup_teacher_temperature_epochs",
    "clip_grad": "clip_grad",
    "freeze_last_layer_epochs": "freeze_last_layer",
}
#: what the comparison holds equal between the three methods (everything but the method knobs)
MATCHED = (
    "backbone",
    "momentum",
    "optimizer",
    "scheduler",
    "max_epochs",
    "data",
    "knn_eval",
    "clean_knn",
    "augmentations",
)


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("dataset", ["cifar", "imagenet-100", "imagenet", "fashion-mnist"])
def test_shipped_ibot_configs_match_dino_and_sop(dataset):
    from solo.methods import DINO

    from sop_plugin.solo.ibot_method import IBOT

    folder = SCRIPTS / "pretrain" / dataset
    ibot, dino = compose(folder, "ibot.yaml"), compose(folder, "dino.yaml")
    sop = compose(folder, "sop.yaml", ["augmentations=global.yaml"])  # as scripts/compare/*.sh runs it
    for cfg in (ibot, dino, sop):
        _count_crops(cfg)
    assert ibot.method == "ibot" and ibot.data.num_small_crops == 0
    ibot, dino, sop = (
        IBOT.add_and_assert_specific_cfg(ibot),
        DINO.add_and_assert_specific_cfg(dino),
        SOP.add_and_assert_specific_cfg(sop),
    )
    for key in MATCHED:
        assert _plain(ibot[key]) == _plain(dino[key]) == _plain(sop[key]), key
    assert ibot.knn_eval.distance_func == "cosine" and ibot.csv.enabled
    for ibot_key, dino_key in IBOT_KEYS_OF_DINO.items():
        assert ibot.method_kwargs[ibot_key] == dino.method_kwargs[dino_key], ibot_key
    assert ibot.method_kwargs.warmup_teacher_temp_epochs == sop.method_kwargs.warmup_teacher_temp_epochs
    assert ibot.method_kwargs.clip_grad == sop.method_kwargs.clip_grad
    ibot_settings = IBOT.parse(ibot)
    ibot_cfg, ibot_masks = ibot_settings.config, ibot_settings.masks
    sop_masks = SOP.parse(sop).masks
    assert isinstance(ibot_cfg, IBOTConfig) and ibot_masks.min_block == sop_masks.min_block
    # each method's own masks and temperatures: iBOT's authors' (p = 0.5, U(0.1, 0.5), 0.04 -> 0.07), SOP's
    # authors' (every global view at 0.3, constant 0.04, half the anchors kept, memories fed by view 2)
    assert ibot_masks == IBOTMethod.default_masks == MaskConfig(prob=0.5, ratio=(0.1, 0.5), min_block=4)
    assert sop_masks == SOPMethod.default_masks == MaskConfig(prob=1.0, ratio=(0.3, 0.3), min_block=4)
    mk = sop.method_kwargs
    assert (mk.teacher_temp, mk.warmup_teacher_temp, mk.anchor_keep, mk.memory_view) == (0.04, 0.04, 0.5, 1)
    assert ibot.method_kwargs.num_prototypes == (8192 if dataset.startswith("imagenet") else 4096)


@pytest.mark.parametrize("dataset", ["cifar", "imagenet-100", "imagenet", "fashion-mnist"])
@pytest.mark.parametrize("method", ["dino", "ibot"])
def test_shipped_linear_configs_of_dino_and_ibot_match_sop(dataset, method):
    linear, sop_linear = (
        compose(SCRIPTS / "linear" / dataset, f"{method}.yaml"),
        compose(SCRIPTS / "linear" / dataset, "sop.yaml"),
    )
    pretrain = compose(SCRIPTS / "pretrain" / dataset, f"{method}.yaml")
    assert linear.pretrain_method == method and linear.name.startswith(method)
    assert _plain(linear.backbone) == _plain(pretrain.backbone)
    for key in ("data", "optimizer", "scheduler", "max_epochs"):
        assert _plain(linear[key]) == _plain(sop_linear[key]), key


def test_cpu_profile_keeps_max_epochs_at_least_the_warm_up():
    folder = SCRIPTS / "pretrain" / "fashion-mnist"
    for name, key in (
        ("sop", "warmup_teacher_temp_epochs"),
        ("dino", "warmup_teacher_temperature_epochs"),
        ("ibot", "warmup_teacher_temp_epochs"),
    ):
        cfg = compose(folder, f"{name}.yaml", ["+profile=cpu"])
        assert cfg.accelerator == "cpu" and cfg.devices == 1 and cfg.optimizer.batch_size == 64
        assert cfg.method_kwargs[key] <= cfg.max_epochs, name
