"""The evaluation suite beyond kNN / linear / retrieval: few-shot, fine-tuning, segmentation, embedding map.

One :class:`SuiteContext` per run holds what every backbone shares (settings, the few-shot
subsets, the segmentation set); :func:`evaluate_backbone` scores one teacher backbone;
:func:`evaluate_controls` scores the random-init backbone (the weights every method starts
from: same seed, same construction) and raw pixels; :func:`write_map` draws the embedding
map from the saved test embeddings. The runner (``sop-bench``) and ``sop-bench-eval`` both
go through here, so a re-evaluation gives the numbers of the run itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from sop_plugin.bench.evals.embedding_map import MapSettings, write_embedding_map
from sop_plugin.bench.evals.fewshot import FewshotSettings, fewshot_subsets, fewshot_top1
from sop_plugin.bench.evals.finetune import FinetuneSettings, finetune_top1
from sop_plugin.bench.evals.seg_data import SegSet, SegSettings, seg_sets
from sop_plugin.bench.evals.segmentation import pixel_patch_tokens, seg_probe, vit_patch_tokens
from sop_plugin.bench.settings import BenchSettings
from sop_plugin.bench.train.module import BenchModule
from sop_plugin.data import ArrayDataset

log = logging.getLogger("sop_bench")

SUITE: tuple[str, ...] = ("fewshot", "finetune", "seg", "embedding_map")
"""Evaluation names (``eval.suite``, ``sop-bench-eval evals=...``)."""

RANDOM_INIT = "random_init"
RAW_PIXELS = "raw_pixels"
EMBEDDING_MAP_PNG = "embedding_map.png"


def check_suite(names: Iterable[str]) -> tuple[str, ...]:
    """The requested evaluations in canonical order; unknown names raise ``ValueError``."""
    names = list(names)
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        raise ValueError(f"unknown evaluation(s) {unknown}: choose from {list(SUITE)}")
    return tuple(n for n in SUITE if n in names)


@dataclass
class SuiteContext:
    """What every backbone of a run is evaluated with."""

    which: tuple[str, ...]
    seed: int
    train: ArrayDataset
    test: ArrayDataset
    out: Path
    fewshot: FewshotSettings
    finetune: FinetuneSettings
    seg: SegSettings
    embedding_map: MapSettings
    img_size: int
    patch_size: int
    controls: bool = True
    subsets: dict[str, Tensor] = field(default_factory=dict)
    _seg_sets: tuple[SegSet, SegSet] | None = None

    @classmethod
    def build(
        cls,
        cfg: Mapping[str, Any],
        train: ArrayDataset,
        test: ArrayDataset,
        out: str | Path,
        which: Iterable[str] | None = None,
    ) -> SuiteContext:
        """From the run config (``eval.*``); settings are checked here, before any training."""
        e = cfg.get("eval", {})
        names = check_suite(e.get("suite", SUITE) if which is None else which)
        seed = int(cfg["seed"])
        ctx = cls(
            which=names,
            seed=seed,
            train=train,
            test=test,
            out=Path(out),
            fewshot=FewshotSettings.from_mapping(e.get("fewshot")),
            finetune=FinetuneSettings.from_mapping(e.get("finetune")),
            seg=SegSettings.from_mapping(e.get("seg")),
            embedding_map=MapSettings.from_mapping(e.get("embedding_map")),
            img_size=int(cfg["crops"]["global_size"]),
            patch_size=int(cfg["model"]["patch_size"]),
            controls=bool(e.get("controls", True)),
        )
        if "fewshot" in names:
            ctx.subsets = fewshot_subsets(train.labels, ctx.fewshot, seed)
        return ctx

    def segmentation_sets(self) -> tuple[SegSet, SegSet]:
        """Built (or read from the cache) once per run."""
        if self._seg_sets is None:
            self._seg_sets = seg_sets(
                self.seg,
                self.seed,
                self.train.images,
                self.train.labels,
                self.test.images,
                self.test.labels,
                self.train.class_names,
                self.out / "cache",
            )
        return self._seg_sets


def _subset_features(module: BenchModule, ctx: SuiteContext) -> Tensor:
    """[CLS] features of the few-shot subsets' images only, in a full-size (otherwise zero) tensor."""
    union = torch.unique(torch.cat(list(ctx.subsets.values())))
    feats = module.features(ctx.train.images[union])
    full = torch.zeros(len(ctx.train), feats.shape[1])
    full[union] = feats
    return full


def evaluate_backbone(
    module: BenchModule,
    ctx: SuiteContext,
    name: str,
    train_x: Tensor | None = None,
    test_x: Tensor | None = None,
) -> dict[str, Any]:
    """The suite on ``module``'s teacher backbone: ``fewshot_top1``, ``finetune_top1``, ``seg_*``.

    ``train_x``/``test_x``: its [CLS] features of the whole train/test set if already computed
    (otherwise the few-shot probe computes just the ones it needs). Also returns
    ``suite_seconds`` (evaluation -> seconds).
    """
    device = module.device
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    n_classes = ctx.train.num_classes
    if "fewshot" in ctx.which:
        start = time.perf_counter()
        train_x = _subset_features(module, ctx) if train_x is None else train_x
        test_x = module.features(ctx.test.images) if test_x is None else test_x
        results["fewshot_top1"] = fewshot_top1(
            train_x,
            ctx.train.labels,
            test_x,
            ctx.test.labels,
            ctx.subsets,
            ctx.fewshot,
            ctx.seed,
            num_classes=n_classes,
        )
        seconds["fewshot"] = time.perf_counter() - start
        log.info("[%s] few-shot top-1 %s (%.0f s)", name, _fmt(results["fewshot_top1"]), seconds["fewshot"])
    if "finetune" in ctx.which:
        start = time.perf_counter()
        results["finetune_top1"] = finetune_top1(
            module.teacher,
            ctx.train.images,
            ctx.train.labels,
            ctx.test.images,
            ctx.test.labels,
            ctx.train.mean,
            ctx.train.std,
            ctx.img_size,
            ctx.finetune,
            ctx.seed,
            num_classes=n_classes,
            device=device,
            desc=f"finetune {name}",
        )
        seconds["finetune"] = time.perf_counter() - start
        log.info("[%s] fine-tuned top-1 %.2f (%.0f s)", name, results["finetune_top1"], seconds["finetune"])
    if "seg" in ctx.which:
        start = time.perf_counter()
        seg_train, seg_test = ctx.segmentation_sets()
        tokens = [
            vit_patch_tokens(
                module.teacher,
                s.images,
                ctx.train.mean,
                ctx.train.std,
                ctx.patch_size,
                ctx.seg.feature_batch_size,
                device,
            )
            for s in (seg_train, seg_test)
        ]
        results.update(_seg_results(tokens, seg_train, seg_test, ctx, device, name))
        seconds["seg"] = time.perf_counter() - start
        log.info(
            "[%s] segmentation mIoU %.2f, pixel acc %.2f (%.0f s)",
            name,
            results["seg_miou"],
            results["seg_pixel_acc"],
            seconds["seg"],
        )
    results["suite_seconds"] = seconds
    return results


def _seg_results(
    tokens: Sequence[Tensor],
    seg_train: SegSet,
    seg_test: SegSet,
    ctx: SuiteContext,
    device: torch.device | str,
    name: str,
) -> dict[str, Any]:
    scores = seg_probe(
        tokens[0],
        seg_train.masks,
        tokens[1],
        seg_test.masks,
        seg_train.num_classes,
        ctx.seg,
        ctx.seed,
        seg_train.class_names,
        device=device,
        desc=f"seg probe {name}",
    )
    return {
        "seg_miou": scores["miou"],
        "seg_pixel_acc": scores["pixel_acc"],
        "seg_iou_by_class": scores["iou"],
    }


def random_init_module(settings: BenchSettings, train: ArrayDataset) -> BenchModule:
    """The backbone every method starts from: the runner seeds the same way before building its module.

    The ViT is built (and initialised) before anything method-specific, so the weights do not
    depend on which method is named here.
    """
    L.seed_everything(settings.seed, workers=True, verbose=False)
    module_settings = settings.module(settings.methods[0], total_steps=1)
    return BenchModule(module_settings, train.images.shape[1], train.mean, train.std)


def evaluate_controls(
    settings: BenchSettings,
    ctx: SuiteContext,
    device: torch.device | str = "cpu",
    save_embeddings: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{"random_init": suite results, "raw_pixels": {"seg_miou", "seg_pixel_acc", ...}}`` (as asked).

    The random-init backbone's test embeddings go to ``<out>/embeddings/random_init.npz`` for
    the embedding map.
    """
    controls: dict[str, dict[str, Any]] = {}
    if ctx.which:
        module = random_init_module(settings, ctx.train).to(device)
        wants_test = "fewshot" in ctx.which or "embedding_map" in ctx.which
        test_x = module.features(ctx.test.images) if wants_test else None
        train_x = _subset_features(module, ctx) if "fewshot" in ctx.which else None
        controls[RANDOM_INIT] = evaluate_backbone(module, ctx, RANDOM_INIT, train_x, test_x)
        if save_embeddings and test_x is not None:
            emb = ctx.out / "embeddings"
            emb.mkdir(parents=True, exist_ok=True)
            np.savez(
                emb / f"{RANDOM_INIT}.npz",
                test_x=test_x.numpy().astype(np.float32),
                test_y=ctx.test.labels.numpy(),
            )
    if "seg" in ctx.which:
        start = time.perf_counter()
        seg_train, seg_test = ctx.segmentation_sets()
        tokens = [pixel_patch_tokens(s.images, ctx.patch_size) for s in (seg_train, seg_test)]
        controls[RAW_PIXELS] = _seg_results(tokens, seg_train, seg_test, ctx, device, RAW_PIXELS)
        controls[RAW_PIXELS]["suite_seconds"] = {"seg": time.perf_counter() - start}
        log.info(
            "[raw pixels] segmentation mIoU %.2f, pixel acc %.2f",
            controls[RAW_PIXELS]["seg_miou"],
            controls[RAW_PIXELS]["seg_pixel_acc"],
        )
    return controls


def write_map(ctx: SuiteContext, names: Sequence[str]) -> dict[str, Any] | None:
    """``embedding_map.png`` from ``<out>/embeddings/<name>.npz`` of each name that has one.

    Each ``.npz`` holds ``test_x`` and ``test_y``.
    """
    embeddings = {}
    for name in names:
        path = ctx.out / "embeddings" / f"{name}.npz"
        if not path.is_file():
            log.warning("embedding map: no %s, leaving %s out", path, name)
            continue
        with np.load(path) as data:
            embeddings[name] = (data["test_x"], data["test_y"])
    if not embeddings:
        return None
    start = time.perf_counter()
    path, backend = write_embedding_map(
        embeddings, ctx.test.class_names, ctx.out / EMBEDDING_MAP_PNG, ctx.embedding_map, ctx.seed
    )
    points = min(len(next(iter(embeddings.values()))[0]), ctx.embedding_map.max_points)
    return {
        "file": path.name,
        "backend": backend,
        "points": points,
        "panels": list(embeddings),
        "seconds": time.perf_counter() - start,
    }


def _fmt(scores: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
