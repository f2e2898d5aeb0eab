"""A ``sop-bench`` config, validated once at the entry point into typed settings.

:func:`bench_settings` refuses every setting that cannot work before any data is read, naming
the key and the fix, and returns :class:`BenchSettings`. Each layer then gets the part it uses:
the trainer :class:`TrainSettings`, the module :class:`ModuleSettings`, the final evaluation
:class:`EvalSettings`. Nothing converts a value and writes it back: a run's step count, known
once the data is loaded, is passed beside the settings (:meth:`BenchSettings.module`).
The resolved mapping stays as ``source``: it is what ``config.json`` and checkpoints record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sop_plugin.bench.checks import ConfigError, world_size
from sop_plugin.bench.train.method_settings import MethodSettings, method_settings
from sop_plugin.core import SOPConfig
from sop_plugin.data import DATASETS, MultiCropAugment
from sop_plugin.methods import MaskConfig, method_names
from sop_plugin.runtime import POLICIES
from sop_plugin.runtime.masking import BlockMaskGenerator


@dataclass(frozen=True)
class ModelSettings:
    """The ViT both student and teacher are built as (the teacher never drops paths)."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    drop_path_rate: float


@dataclass(frozen=True)
class CropSettings:
    """Multi-crop sizes and scales; ``extra``: further :class:`MultiCropAugment` keywords."""

    global_size: int
    local_size: int
    num_local: int
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    extra: Mapping[str, Any]

    def augment(self, mean: tuple[float, ...], std: tuple[float, ...]) -> MultiCropAugment:
        """The multi-crop augmentation of images normalised with ``mean`` and ``std``."""
        return MultiCropAugment(
            global_size=self.global_size,
            local_size=self.local_size,
            num_local=self.num_local,
            global_scale=self.global_scale,
            local_scale=self.local_scale,
            mean=mean,
            std=std,
            **self.extra,
        )


@dataclass(frozen=True)
class TrainSettings:
    """Length, batch and fault handling of every method's training."""

    epochs: int
    max_steps: int
    batch_size: int
    num_workers: int
    limit_train_images: int | None
    checkpoint_every_n_steps: int | None
    on_nonfinite: str
    max_consecutive_skips: int
    rng_chunk: int | None


@dataclass(frozen=True)
class EvalSettings:
    """The kNN, linear probe, retrieval and corruption scores, and the diagnostics during training."""

    holdout: int | None
    knn_k: int
    knn_temperature: float
    every_epoch: bool
    epoch_train_subset: int
    epoch_test_subset: int
    linear_epochs: int
    retrieval_max_queries: int
    corruptions: tuple[str, ...]
    sop_grid_rows: int
    collapse_probe_images: int
    collapse_knn_k: int
    collapse_every_n_steps: int


@dataclass(frozen=True)
class ModuleSettings:
    """What one method's :class:`~sop_plugin.bench.train.module.BenchModule` is built from."""

    method: MethodSettings
    model: ModelSettings
    crops: CropSettings
    train: TrainSettings
    ema_start: float
    ema_end: float
    seed: int
    world: int
    total_steps: int
    #: the resolved config, recorded in checkpoints so that ``sop-bench-eval`` can rebuild the module
    source: Mapping[str, Any]

    @property
    def peak_lr(self) -> float:
        """The method's ``base_lr`` x global batch / 256."""
        return self.method.optim.peak_lr(self.train.batch_size * self.world)


@dataclass(frozen=True)
class BenchSettings:
    """A whole ``sop-bench`` run."""

    source: Mapping[str, Any]
    methods: tuple[str, ...]
    seed: int
    world: int
    trust_checkpoint: bool
    threads: int | None
    data: Mapping[str, Any]
    train: TrainSettings
    model: ModelSettings
    crops: CropSettings
    eval: EvalSettings
    trainer: Mapping[str, Any]
    method: Mapping[str, MethodSettings]
    #: the teacher's EMA momentum, cosine from the first to the second over the run
    ema: tuple[float, float]

    @property
    def global_batch(self) -> int:
        """Images per optimisation step over every process."""
        return self.train.batch_size * self.world

    def total_steps(self, num_train: int) -> int:
        """Optimisation steps of one method's run (drives the LR, EMA and temperature schedules)."""
        total = self.train.epochs * (num_train // self.global_batch)
        if self.train.max_steps > 0:
            return min(self.train.max_steps, total)
        return total

    def module(self, method: str, total_steps: int) -> ModuleSettings:
        """The settings of ``method``'s module for a run of ``total_steps`` steps."""
        return ModuleSettings(
            method=self.method[method],
            model=self.model,
            crops=self.crops,
            train=self.train,
            ema_start=self.ema[0],
            ema_end=self.ema[1],
            seed=self.seed,
            world=self.world,
            total_steps=max(1, total_steps),
            source=self.source,
        )


def bench_settings(cfg: Mapping[str, Any]) -> BenchSettings:
    """Validate the resolved config ``cfg``; :class:`ConfigError` names the setting and the fix."""
    methods = tuple(cfg["methods"])
    if not methods:
        raise ConfigError(f"methods is empty: list at least one of {method_names()}, e.g. methods=[sop]")
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise ConfigError(f"methods={list(methods)}: unknown {unknown}; choose from {method_names()}")
    name = str(cfg["data"]["name"]).strip().lower()
    if name not in DATASETS:
        raise ConfigError(
            f"data.name={cfg['data']['name']!r} is not a dataset; choose one of {sorted(DATASETS)} "
            f"(e.g. data=fashion-mnist, or data=image-folder data.path=DIR)"
        )
    if not isinstance(cfg.get("trust_checkpoint", False), bool):
        raise ConfigError(f"trust_checkpoint={cfg.get('trust_checkpoint')!r} must be true or false")
    model = _model(cfg["model"])
    crops = _crops(cfg["crops"], model.patch_size)
    train = _train(cfg["train"])
    world = world_size(cfg["trainer"])
    _check_masks(cfg, methods, crops.global_size // model.patch_size)
    per_method = {}
    for method in methods:
        try:
            settings = method_settings(cfg, method)
            if isinstance(settings.config, SOPConfig):
                settings.config.validate(train.batch_size * world)
        except ValueError as err:
            raise ConfigError(f"{method}: {err} (settings under {method}.*)") from err
        per_method[method] = settings
    threads = cfg.get("threads")
    return BenchSettings(
        source=cfg,
        methods=methods,
        seed=int(cfg["seed"]),
        world=world,
        trust_checkpoint=bool(cfg.get("trust_checkpoint", False)),
        threads=int(threads) if threads else None,
        data=cfg["data"],
        train=train,
        model=model,
        crops=crops,
        eval=_eval(cfg["eval"]),
        trainer=cfg["trainer"],
        method=per_method,
        ema=(float(cfg["ema"]["start"]), float(cfg["ema"]["end"])),
    )


def _model(m: Mapping[str, Any]) -> ModelSettings:
    if m["embed_dim"] % m["num_heads"]:
        raise ConfigError(
            f"model.embed_dim={m['embed_dim']} must be divisible by model.num_heads={m['num_heads']}: "
            f"change one of them"
        )
    return ModelSettings(
        patch_size=int(m["patch_size"]),
        embed_dim=int(m["embed_dim"]),
        depth=int(m["depth"]),
        num_heads=int(m["num_heads"]),
        drop_path_rate=float(m.get("drop_path_rate", 0.0)),
    )


def _crops(c: Mapping[str, Any], patch_size: int) -> CropSettings:
    for size_key in ("global_size", "local_size"):
        if c[size_key] % patch_size != 0:
            raise ConfigError(
                f"crops.{size_key}={c[size_key]} is not divisible by model.patch_size={patch_size}: "
                f"pick sizes that are multiples of the patch size"
            )
    crops = CropSettings(
        global_size=int(c["global_size"]),
        local_size=int(c["local_size"]),
        num_local=int(c["num_local"]),
        global_scale=tuple(c["global_scale"]),
        local_scale=tuple(c["local_scale"]),
        extra=dict(c.get("extra") or {}),
    )
    try:
        crops.augment(mean=(0.5,), std=(0.5,))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"crops: {err}: fix the crops.* settings") from err
    return crops


def _check_masks(cfg: Mapping[str, Any], methods: tuple[str, ...], grid: int) -> None:
    sections = {"masks": cfg["masks"]}
    for m in methods:
        if cfg[m].get("masks"):
            sections[f"{m}.masks"] = cfg[m]["masks"]
    for name, values in sections.items():
        try:
            masks = MaskConfig.from_mapping(values)
            BlockMaskGenerator((grid, grid), masks.prob, masks.ratio, masks.min_block)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: {err}: fix {name}.prob / {name}.ratio") from err


def _train(t: Mapping[str, Any]) -> TrainSettings:
    if t["epochs"] < 1 and t["max_steps"] <= 0:
        raise ConfigError("train.epochs must be >= 1 (or set train.max_steps > 0)")
    if t["batch_size"] < 1:
        raise ConfigError(f"train.batch_size={t['batch_size']} must be >= 1")
    policy = t.get("on_nonfinite", "stop")
    if policy not in POLICIES:
        raise ConfigError(f"train.on_nonfinite={policy!r}; choose one of {list(POLICIES)}")
    every = t.get("checkpoint_every_n_steps")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError(
            f"train.checkpoint_every_n_steps={every!r} must be a positive integer or null (epoch ends only)"
        )
    chunk = t.get("rng_chunk")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1 or t["batch_size"] % chunk):
        raise ConfigError(
            f"train.rng_chunk={chunk!r} must be a positive divisor of train.batch_size={t['batch_size']} "
            f"(or null: one chunk per process)"
        )
    limit = t.get("limit_train_images")
    return TrainSettings(
        epochs=int(t["epochs"]),
        max_steps=int(t["max_steps"]),
        batch_size=int(t["batch_size"]),
        num_workers=int(t["num_workers"]),
        limit_train_images=int(limit) if limit else None,
        checkpoint_every_n_steps=every,
        on_nonfinite=str(policy),
        max_consecutive_skips=int(t.get("max_consecutive_skips", 10)),
        rng_chunk=chunk,
    )


def _eval(e: Mapping[str, Any]) -> EvalSettings:
    holdout = e.get("holdout")
    return EvalSettings(
        holdout=int(holdout) if holdout else None,
        knn_k=int(e["knn_k"]),
        knn_temperature=float(e["knn_temperature"]),
        every_epoch=bool(e["every_epoch"]),
        epoch_train_subset=int(e["epoch_train_subset"]),
        epoch_test_subset=int(e["epoch_test_subset"]),
        linear_epochs=int(e["linear_epochs"]),
        retrieval_max_queries=int(e["retrieval_max_queries"]),
        corruptions=tuple(e["corruptions"]),
        sop_grid_rows=int(e["sop_grid_rows"]),
        collapse_probe_images=int(e.get("collapse_probe_images", 2048)),
        collapse_knn_k=int(e.get("collapse_knn_k", 8)),
        collapse_every_n_steps=int(e.get("collapse_every_n_steps") or 0),
    )
