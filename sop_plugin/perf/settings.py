"""Named model/crop/batch settings that ``sop-perf`` times, as overrides of the benchmark config.

Every setting is the benchmark's own hydra config (``conf/config.yaml``) plus overrides,
so the timed step is the one ``sop-bench`` trains with. Methods share everything but the
objective; DINO and iBOT keep their prototype counts of the profile the setting starts from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

#: the methods ``sop-perf`` times, in report order
METHODS = ("sop", "ibot", "dino")


@dataclass(frozen=True)
class PerfSetting:
    """One timed configuration.

    Attributes:
        overrides: hydra overrides applied to the benchmark config.
        channels: image channels of the synthetic batch.
        warmup: untimed steps per method before timing.
        steps: timed steps per method.
        description: one line for the report.
        targets: whether the performance issue's limits (step-time ratios, memory, retrieval
            share) are checked on this setting; other settings are reported for reference.
    """

    name: str
    overrides: tuple[str, ...]
    channels: int
    warmup: int
    steps: int
    description: str
    targets: bool = True


#: timm's ViT-Tiny shape (the patch size comes from the profile)
_VIT_TINY = ("model.embed_dim=192", "model.depth=12", "model.num_heads=3")
_TINY = (
    "model.patch_size=4 model.embed_dim=32 model.depth=1 model.num_heads=2 "
    "crops.global_size=16 crops.local_size=8 crops.num_local=1 train.batch_size=8 "
    "head.head_hidden_dim=64 dino.num_prototypes=128 ibot.num_prototypes=128 "
    "sop.class_memory_size=256 sop.patch_memory_size=256 sop.class_num_anchors=8 sop.patch_num_anchors=16"
).split()

#: the full (GPU) profile as a perf setting
_VIT_SMALL = PerfSetting(
    "vit_small_224",
    ("profile=full", "train.batch_size=64", "~crops.extra"),
    channels=3,
    warmup=3,
    steps=10,
    description="the full (GPU) profile: ViT-S/16 at 224 px, batch 64, 2x224 + 10x96 px crops, "
    "SOP class memory 65,536, DINO 65,536 / iBOT 8,192 prototypes (bf16 on GPU)",
)

PERF_SETTINGS: dict[str, PerfSetting] = {
    s.name: s
    for s in (
        PerfSetting(
            "vit_tiny_28",
            ("profile=quick", *_VIT_TINY),
            channels=1,
            warmup=3,
            steps=15,
            description="timm ViT-Tiny/7 (dim 192, depth 12, 3 heads) at 28 px, batch 64, "
            "2x28 + 2x14 px crops, SOP class memory 8,192, DINO/iBOT 4,096 prototypes "
            "(the quick profile with a ViT-Tiny backbone)",
        ),
        PerfSetting(
            "quick_28",
            ("profile=quick",),
            channels=1,
            warmup=3,
            steps=15,
            description="the benchmark's quick profile as trained: ViT patch 7, dim 128, depth 4, batch 64, "
            "2x28 + 2x14 px crops, SOP class memory 8,192, DINO/iBOT 4,096 prototypes "
            "(a reference: its backbone is so small that the heads and losses dominate the step)",
            targets=False,
        ),
        PerfSetting(
            "quick_28_global",
            ("profile=quick", "sop.mim_weight=0"),
            channels=1,
            warmup=3,
            steps=15,
            description="quick_28 with SOP's global loss only (no SOP-MIM, no masks): "
            "SOP's class level against DINO, which has no patch branch either "
            "(a diagnostic; iBOT keeps its MIM)",
            targets=False,
        ),
        PerfSetting(
            "vit_tiny_224",
            (
                "profile=full",
                *_VIT_TINY,
                "model.patch_size=16",
                "train.batch_size=16",
                "crops.num_local=2",
                "~crops.extra",
            ),
            channels=3,
            warmup=2,
            steps=8,
            description="timm ViT-Tiny/16 (dim 192, depth 12, 3 heads) at 224 px, batch 16, "
            "2x224 + 2x96 px crops, SOP class memory 65,536, DINO 65,536 / iBOT 8,192 prototypes",
        ),
        _VIT_SMALL,
        dataclasses.replace(
            _VIT_SMALL,
            name="vit_small_224_b128",
            overrides=("profile=full", "train.batch_size=128", "~crops.extra"),
            description="vit_small_224 at batch 128 per GPU, so that the GPU rather than the host "
            "sets the pace (benchmarks/gpu_run.sh)",
        ),
        PerfSetting(
            "tiny",
            ("profile=quick", *_TINY),
            channels=1,
            warmup=1,
            steps=2,
            description="a seconds-long smoke setting for tests",
            targets=False,
        ),
    )
}


def get_setting(name: str) -> PerfSetting:
    """The setting named ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in PERF_SETTINGS:
        raise ValueError(f"unknown perf setting {name!r}; choose from {sorted(PERF_SETTINGS)}")
    return PERF_SETTINGS[name]


def resolve_config(setting: PerfSetting) -> dict[str, Any]:
    """The resolved benchmark config of ``setting`` (hydra compose of conf/config.yaml)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module("sop_plugin.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(setting.overrides))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]
