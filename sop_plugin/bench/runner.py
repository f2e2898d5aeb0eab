"""Run the side-by-side benchmark: train every method, evaluate, write results, report and plots."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from sop_plugin.bench.callbacks import (
    AtomicCheckpointIO,
    KNNMonitor,
    StepTimer,
    peak_rss_mb,
    reset_peak_rss,
)
from sop_plugin.bench.corruptions import corrupt
from sop_plugin.bench.evaluation import (
    knn_top1,
    linear_probe,
    raw_pixel_features,
    retrieval_metrics,
)
from sop_plugin.bench.module import BenchModule
from sop_plugin.bench.objectives import OBJECTIVES
from sop_plugin.bench.plots import plot_learning_curves, plot_metric_bars, plot_sop_grid
from sop_plugin.bench.report import validate_results, write_report
from sop_plugin.data import ArrayDataset, get_dataset

log = logging.getLogger("sop_bench")


class ConfigError(ValueError):
    """A benchmark setting that cannot work; raised before any training starts."""


class IndexedImages(Dataset):
    """(uint8 image, label, index) triples over in-memory tensors."""

    def __init__(self, data: ArrayDataset) -> None:
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[i], self.labels[i], i


def _world_size(trainer_cfg: dict[str, Any]) -> int:
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices * int(trainer_cfg.get("num_nodes", 1))
    if isinstance(devices, list | tuple):
        return len(devices) * int(trainer_cfg.get("num_nodes", 1))
    return 1


def check_config(cfg: dict[str, Any]) -> None:
    """Reject settings that cannot work, naming the key and the fix."""
    unknown = [m for m in cfg["methods"] if m not in OBJECTIVES]
    if unknown or not cfg["methods"]:
        raise ConfigError(f"methods={cfg['methods']}: unknown {unknown}; choose from {sorted(OBJECTIVES)}")
    m, crops = cfg["model"], cfg["crops"]
    for size_key in ("global_size", "local_size"):
        if crops[size_key] % m["patch_size"] != 0:
            raise ConfigError(
                f"crops.{size_key}={crops[size_key]} is not divisible by model.patch_size={m['patch_size']}: "
                f"pick sizes that are multiples of the patch size"
            )
    if m["embed_dim"] % m["num_heads"]:
        raise ConfigError(f"model.embed_dim={m['embed_dim']} must be divisible by model.num_heads={m['num_heads']}")
    if cfg["train"]["epochs"] < 1 and cfg["train"]["max_steps"] <= 0:
        raise ConfigError("train.epochs must be >= 1 (or set train.max_steps > 0)")
    if "sop" in cfg["methods"]:
        from sop_plugin.core import SOPConfig

        try:
            SOPConfig(dim=cfg["sop"]["head"]["bottleneck_dim"], **cfg["sop"]["sop"]).validate(
                cfg["train"]["batch_size"] * _world_size(cfg["trainer"])
            )
        except ValueError as err:
            raise ConfigError(f"sop.sop: {err}") from err


def load_data(cfg: dict[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    d = cfg["data"]
    options = {k: v for k, v in d.items() if k not in ("name", "path", "download")}
    train = get_dataset(d["name"], d["path"], "train", bool(d["download"]), **options)
    test = get_dataset(d["name"], d["path"], "test", bool(d["download"]), **options)
    limit = cfg["train"].get("limit_train_images")
    if limit:
        train = train.subset(torch.arange(min(int(limit), len(train))))
    global_batch = cfg["train"]["batch_size"] * _world_size(cfg["trainer"])
    if global_batch > len(train):
        raise ConfigError(
            f"train.batch_size x devices = {global_batch} exceeds the {len(train)} training images: lower train.batch_size"
        )
    return train, test


def _subset(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[: min(n, x.shape[0])]


def train_method(method: str, cfg: dict[str, Any], train: ArrayDataset, test: ArrayDataset,
                 out: Path) -> dict[str, Any] | None:
    """Train one method and evaluate it; returns its results on rank 0, None on other ranks."""
    seed = int(cfg["seed"])
    L.seed_everything(seed, workers=True)
    t = cfg["train"]
    world = _world_size(cfg["trainer"])
    steps_per_epoch = len(train) // (t["batch_size"] * world)
    total = t["max_steps"] if t["max_steps"] > 0 else t["epochs"] * steps_per_epoch
    if t["max_steps"] > 0:
        total = min(total, t["epochs"] * steps_per_epoch)
    module = BenchModule(cfg, method, train.images.shape[1], train.mean, train.std, total)
    loader = DataLoader(IndexedImages(train), batch_size=t["batch_size"], shuffle=True, drop_last=True,
                        num_workers=t["num_workers"], generator=torch.Generator().manual_seed(seed))
    e = cfg["eval"]
    knn_cb = KNNMonitor(_subset(train.images, e["epoch_train_subset"]), _subset(train.labels, e["epoch_train_subset"]),
                        _subset(test.images, e["epoch_test_subset"]), _subset(test.labels, e["epoch_test_subset"]),
                        k=e["knn_k"], temperature=e["knn_temperature"], every_epoch=e["every_epoch"])
    timer = StepTimer()
    method_dir = out / method
    ckpt = ModelCheckpoint(dirpath=method_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer_kwargs = dict(cfg["trainer"])
    trainer = L.Trainer(
        max_epochs=t["epochs"], max_steps=t["max_steps"] if t["max_steps"] > 0 else -1,
        default_root_dir=str(method_dir), logger=CSVLogger(str(out), name=method, version=""),
        callbacks=[knn_cb, timer, ckpt], plugins=[AtomicCheckpointIO()], enable_model_summary=False,
        **trainer_kwargs,
    )
    reset_peak_rss()
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=cfg.get("resume"))
    train_seconds = time.perf_counter() - start
    if trainer.global_rank != 0:
        return None
    module.to("cpu" if not torch.cuda.is_available() else module.device)
    return evaluate(module, method, cfg, train, test, out, knn_cb.curve, train_seconds, timer.median,
                    int(trainer.current_epoch))


def evaluate(module: BenchModule, method: str, cfg: dict[str, Any], train: ArrayDataset, test: ArrayDataset,
             out: Path, curve: list[tuple[float, float]], train_seconds: float, step_median: float,
             epochs: int) -> dict[str, Any]:
    """Final evaluation of the teacher backbone's [CLS] features; saves the embeddings."""
    e = cfg["eval"]
    log.info("[%s] evaluating teacher features", method)
    train_x, test_x = module.features(train.images), module.features(test.images)
    knn = knn_top1(train_x, train.labels, test_x, test.labels, k=e["knn_k"], temperature=e["knn_temperature"])
    linear = linear_probe(train_x, train.labels, test_x, test.labels, epochs=e["linear_epochs"], seed=cfg["seed"])
    ret = retrieval_metrics(test_x, test.labels, max_queries=e["retrieval_max_queries"], seed=cfg["seed"])
    corrupted = {}
    for name in e["corruptions"]:
        cx = module.features(corrupt(test.images, name, seed=cfg["seed"]))
        corrupted[name] = knn_top1(train_x, train.labels, cx, test.labels, k=e["knn_k"],
                                   temperature=e["knn_temperature"])
    emb_dir = out / "embeddings"
    emb_dir.mkdir(parents=True, exist_ok=True)
    np.savez(emb_dir / f"{method}.npz", train_x=train_x.numpy().astype(np.float32), train_y=train.labels.numpy(),
             test_x=test_x.numpy().astype(np.float32), test_y=test.labels.numpy())
    if method == "sop":
        _sop_grid(module, train, out / "sop_grid.png", e["sop_grid_rows"], cfg["seed"])
    return {
        "knn_top1": knn,
        "linear_top1": linear,
        "map_at_r": ret["map_at_r"],
        "recall_at_1": ret["recall_at_1"],
        "corrupt_knn_top1": float(np.mean(list(corrupted.values()))) if corrupted else float("nan"),
        "corrupt_knn_top1_by_corruption": corrupted,
        "random_init_knn_top1_subset": curve[0][1] if curve else None,
        "knn_curve_subset": [list(p) for p in curve],
        "train_seconds": train_seconds,
        "step_seconds_median": step_median,
        "peak_rss_mb": peak_rss_mb(),
        "epochs": epochs,
    }


def _sop_grid(module: BenchModule, train: ArrayDataset, path: Path, rows: int, seed: int) -> None:
    try:
        anchors, supports, sims = module.objective.sop_examples(rows, seed=seed)
    except ValueError as err:
        log.warning("no SOP grid: %s", err)
        return
    plot_sop_grid(train.images[anchors.cpu()], train.images[supports.cpu()], path, similarities=sims.cpu())


def raw_pixel_floor(train: ArrayDataset, test: ArrayDataset, k: int, temperature: float) -> float:
    return knn_top1(raw_pixel_features(train.images), train.labels, raw_pixel_features(test.images), test.labels,
                    k=k, temperature=temperature)


def run(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The whole benchmark; returns the results dict (rank 0) and writes everything under ``cfg['out']``."""
    check_config(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    out = Path(cfg["out"] or Path("runs/bench") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    cfg["out"] = str(out)
    train, test = load_data(cfg)
    is_rank0 = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    if is_rank0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        log.info("writing to %s", out)
    e = cfg["eval"]
    floor = raw_pixel_floor(train, test, e["knn_k"], e["knn_temperature"]) if is_rank0 else float("nan")
    methods: dict[str, Any] = {}
    for method in cfg["methods"]:
        log.info("=== %s ===", method)
        res = train_method(method, cfg, train, test, out)
        if res is not None:
            methods[method] = res
    if not is_rank0:
        return None
    results = {"dataset": cfg["data"]["name"], "seed": cfg["seed"], "profile": cfg["profile_name"],
               "raw_pixel_knn_top1": floor, "methods": methods}
    validate_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_learning_curves({m: r["knn_curve_subset"] for m, r in methods.items()}, floor, out / "knn_curve.png")
    plot_metric_bars(methods, ["knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1"],
                     out / "metrics.png")
    write_report(results, out / "report.md")
    log.info("results: %s", out / "results.json")
    return results
