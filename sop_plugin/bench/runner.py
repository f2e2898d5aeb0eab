"""Run the side-by-side benchmark: train every method, evaluate, write results, report and plots."""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from sop_plugin.bench.callbacks import (
    CollapseMonitor,
    KNNMonitor,
    LastCheckpoint,
    ResumableCSVLogger,
    StepTimer,
    peak_rss_mb,
    reset_peak_rss,
)
from sop_plugin.bench.checks import ConfigError, check_config, check_resume, world_size
from sop_plugin.bench.collapse import summarize_history
from sop_plugin.bench.corruptions import corrupt
from sop_plugin.bench.evals.suite import RANDOM_INIT, SuiteContext, evaluate_backbone, evaluate_controls, write_map
from sop_plugin.bench.evaluation import knn_top1, linear_probe, raw_pixel_features, retrieval_metrics
from sop_plugin.bench.interruption import RunProgress, kept_results
from sop_plugin.bench.machine import machine_info
from sop_plugin.bench.method_settings import recipe_summary
from sop_plugin.bench.module import BenchModule
from sop_plugin.bench.plots import plot_collapse, plot_learning_curves, plot_metric_bars, plot_sop_grid, plot_suite_bars
from sop_plugin.bench.report import suite_rows, validate_results, write_report
from sop_plugin.bench.sampler import GlobalBatchSampler, ResumableLoader
from sop_plugin.data import ArrayDataset, get_dataset
from sop_plugin.runtime import AtomicCheckpointIO, is_rank_zero

log = logging.getLogger("sop_bench")

#: rank 0 passes its output directory to the DDP processes Lightning launches
OUT_ENV = "SOP_BENCH_OUT"


class IndexedImages(Dataset):
    """(uint8 image, label, index) triples over in-memory tensors."""

    def __init__(self, data: ArrayDataset) -> None:
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[i], self.labels[i], i


def load_data(cfg: dict[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test split of ``data``; errors name the ``data.*`` setting to fix."""
    d = cfg["data"]
    options = {k: v for k, v in d.items() if k not in ("name", "path", "download")}
    try:
        train = get_dataset(d["name"], d["path"], "train", bool(d["download"]), **options)
        test = get_dataset(d["name"], d["path"], "test", bool(d["download"]), **options)
    except OSError as err:
        raise ConfigError(f"cannot read data.path={d['path']} ({err}): fix the path or its permissions") from err
    except ValueError as err:
        if type(err) is not ValueError:
            raise  # DatasetNotFoundError / DatasetCorruptError: already name data.path and the fix
        raise ConfigError(f"data ({d['name']}): {err}") from err
    holdout = cfg["eval"].get("holdout")
    if holdout:  # tuning: the last N training images stand in for the test set, which stays unseen
        if not 0 < int(holdout) < len(train):
            raise ConfigError(f"eval.holdout={holdout} must be in [1, {len(train) - 1}] (training images)")
        test = train.subset(torch.arange(len(train) - int(holdout), len(train)))
        train = train.subset(torch.arange(len(train) - int(holdout)))
    limit = cfg["train"].get("limit_train_images")
    if limit:
        train = train.subset(torch.arange(min(int(limit), len(train))))
    global_batch = cfg["train"]["batch_size"] * world_size(cfg["trainer"])
    if global_batch > len(train):
        raise ConfigError(
            f"train.batch_size x devices = {global_batch} exceeds the {len(train)} training images: lower train.batch_size"
        )
    e = cfg["eval"]
    n_knn = min(len(train), e["epoch_train_subset"])  # the kNN before training always runs on the subset
    if not 1 <= e["knn_k"] <= n_knn:
        raise ConfigError(
            f"eval.knn_k={e['knn_k']} must be in [1, {n_knn}] (training images used by the kNN): "
            f"lower eval.knn_k or raise eval.epoch_train_subset"
        )
    return train, test


def _subset(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[: min(n, x.shape[0])]


def total_steps(cfg: dict[str, Any], num_train: int) -> int:
    """Optimisation steps of one method's run (drives the LR, EMA and temperature schedules)."""
    t = cfg["train"]
    steps_per_epoch = num_train // (t["batch_size"] * world_size(cfg["trainer"]))
    total = t["epochs"] * steps_per_epoch
    return min(t["max_steps"], total) if t["max_steps"] > 0 else total


def trainer_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg.trainer`` for ``L.Trainer``; plain DDP does not re-broadcast buffers every forward.

    Every buffer is already identical on every rank by construction (memories gathered,
    DINO/iBOT centres all-reduced), so DDP's per-step broadcast from rank 0 would only
    copy the memories (MBs) for nothing.
    """
    kwargs = dict(cfg["trainer"])
    if world_size(kwargs) > 1 and kwargs.get("strategy", "auto") in ("ddp", "auto"):
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        kwargs["strategy"] = DDPStrategy(**{"forward_sync_buffers" if newer else "broadcast_buffers": False})
    return kwargs


@dataclass
class Fitted:
    """A trained method: the module, the trainer and what the callbacks measured."""

    module: BenchModule
    trainer: L.Trainer
    curve: list[tuple[float, float]]
    seconds: float
    steps: dict[str, float]  # StepTimer.summary(): median, p90, max, sum
    collapse: dict[str, Any] | None = field(default=None)  # collapse.summarize_history(); None: not measured


def fit_method(
    method: str,
    cfg: dict[str, Any],
    train: ArrayDataset,
    test: ArrayDataset,
    out: Path,
    ckpt_path: str | Path | None = None,
    callbacks: list[L.Callback] | None = None,
) -> Fitted:
    """Train one method (resuming from ``ckpt_path`` if given) on every rank."""
    seed = int(cfg["seed"])
    L.seed_everything(seed, workers=True)
    t = cfg["train"]
    module = BenchModule(cfg, method, train.images.shape[1], train.mean, train.std, total_steps(cfg, len(train)))
    sampler = GlobalBatchSampler(len(train), t["batch_size"], seed, position=module.data_position)
    loader = ResumableLoader(IndexedImages(train), batch_sampler=sampler, num_workers=t["num_workers"])
    e = cfg["eval"]
    knn_cb = KNNMonitor(
        _subset(train.images, e["epoch_train_subset"]),
        _subset(train.labels, e["epoch_train_subset"]),
        _subset(test.images, e["epoch_test_subset"]),
        _subset(test.labels, e["epoch_test_subset"]),
        k=e["knn_k"],
        temperature=e["knn_temperature"],
        every_epoch=e["every_epoch"],
    )
    probe_n = min(len(train), int(e.get("collapse_probe_images", 2048)))  # 0: no collapse diagnostics
    knn_k = int(e.get("collapse_knn_k", 8))
    every_n = int(e.get("collapse_every_n_steps") or 0)
    collapse_cb = (
        [
            CollapseMonitor(
                train.images[:probe_n], k=knn_k, seed=seed, every_epoch=e["every_epoch"], every_n_steps=every_n
            )
        ]
        if probe_n
        else []
    )
    timer = StepTimer()  # keeps its times (and the training seconds) across a resume
    method_dir = out / method
    ckpt = LastCheckpoint(method_dir / "checkpoints", every_n_steps=t.get("checkpoint_every_n_steps") or 0)
    trainer = L.Trainer(
        max_epochs=t["epochs"],
        max_steps=t["max_steps"] if t["max_steps"] > 0 else -1,
        default_root_dir=str(method_dir),
        logger=ResumableCSVLogger(str(out), name=method, version=""),
        callbacks=[knn_cb, *collapse_cb, timer, ckpt, *(callbacks or [])],
        plugins=[AtomicCheckpointIO(trust_checkpoint=bool(cfg.get("trust_checkpoint", False)))],
        enable_model_summary=False,
        use_distributed_sampler=False,
        **trainer_options(cfg),
    )
    reset_peak_rss()
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.perf_counter() - start + timer.resumed_seconds
    collapse = summarize_history(collapse_cb[0].history, probe_n, knn_k) if collapse_cb else None
    return Fitted(module, trainer, knn_cb.curve, seconds, timer.summary(), collapse)


def evaluate_fitted(
    method: str,
    fitted: Fitted,
    cfg: dict[str, Any],
    train: ArrayDataset,
    test: ArrayDataset,
    out: Path,
    suite: SuiteContext | None = None,
) -> dict[str, Any]:
    """Final evaluation of a trained method (rank 0 only); ``suite``: also few-shot, fine-tuning, segmentation."""
    module = fitted.module
    module.to("cpu" if not torch.cuda.is_available() else module.device)
    return evaluate(
        module,
        method,
        cfg,
        train,
        test,
        out,
        fitted.curve,
        fitted.seconds,
        fitted.steps,
        int(fitted.trainer.current_epoch),
        suite,
        fitted.collapse,
    )


def evaluate(
    module: BenchModule,
    method: str,
    cfg: dict[str, Any],
    train: ArrayDataset,
    test: ArrayDataset,
    out: Path,
    curve: list[tuple[float, float]],
    train_seconds: float,
    steps: dict[str, float],
    epochs: int,
    suite: SuiteContext | None = None,
    collapse: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Final evaluation of the teacher backbone's [CLS] features (and ``suite``); saves the embeddings.

    ``collapse`` (the training's collapse diagnostics, :func:`~sop_plugin.bench.collapse.summarize_history`)
    is stored as the method's ``collapse``.
    """
    e = cfg["eval"]
    log.info("[%s] evaluating teacher features", method)
    train_x, test_x = module.features(train.images), module.features(test.images)
    knn = knn_top1(train_x, train.labels, test_x, test.labels, k=e["knn_k"], temperature=e["knn_temperature"])
    linear = linear_probe(train_x, train.labels, test_x, test.labels, epochs=e["linear_epochs"], seed=cfg["seed"])
    ret = retrieval_metrics(test_x, test.labels, max_queries=e["retrieval_max_queries"], seed=cfg["seed"])
    corrupted = {}
    for name in e["corruptions"]:
        cx = module.features(corrupt(test.images, name, seed=cfg["seed"]))
        corrupted[name] = knn_top1(
            train_x, train.labels, cx, test.labels, k=e["knn_k"], temperature=e["knn_temperature"]
        )
    emb_dir = out / "embeddings"
    emb_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        emb_dir / f"{method}.npz",
        train_x=train_x.numpy().astype(np.float32),
        train_y=train.labels.numpy(),
        test_x=test_x.numpy().astype(np.float32),
        test_y=test.labels.numpy(),
    )
    if method == "sop":
        _sop_grid(module, train, out / "sop_grid.png", e["sop_grid_rows"], cfg["seed"])
    extra = evaluate_backbone(module, suite, method, train_x, test_x) if suite is not None and suite.which else {}
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
        "step_seconds_median": steps["median"],
        "step_seconds_p90": steps["p90"],
        "step_seconds_max": steps["max"],
        "step_seconds_sum": steps["sum"],  # train_seconds minus this: evaluation, checkpoints, loading
        "peak_rss_mb": peak_rss_mb(),
        "epochs": epochs,
        **extra,  # finetune_top1, fewshot_top1, seg_miou, seg_pixel_acc, ... (evals/suite.py)
        **({"collapse": collapse} if collapse is not None else {}),
    }


def _sop_grid(module: BenchModule, train: ArrayDataset, path: Path, rows: int, seed: int) -> None:
    try:
        anchors, supports, sims = module.objective.sop_examples(rows, seed=seed)
    except ValueError as err:
        log.warning("no SOP grid: %s", err)
        return
    plot_sop_grid(train.images[anchors.cpu()], train.images[supports.cpu()], path, similarities=sims.cpu())


def _default_out(cfg: dict[str, Any]) -> Path:
    resume = cfg.get("resume")
    if resume and Path(str(resume)).is_dir():
        return Path(str(resume))  # resuming a run directory continues writing into it
    return Path("runs/bench") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def raw_pixel_floor(train: ArrayDataset, test: ArrayDataset, k: int, temperature: float) -> float:
    return knn_top1(
        raw_pixel_features(train.images),
        train.labels,
        raw_pixel_features(test.images),
        test.labels,
        k=k,
        temperature=temperature,
    )


def run(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The whole benchmark; returns the results dict (rank 0) and writes everything under ``cfg['out']``.

    Every check (config, resume checkpoints, data) runs before any training. Under DDP
    every rank trains each method; rank 0 evaluates them all after the last one, so the
    other ranks never wait in a collective while rank 0 evaluates.

    SIGTERM / SIGINT (:mod:`sop_plugin.bench.interruption`): training stops at the next batch
    end with a checkpoint of that step, evaluation at once; ``results.json`` then holds the
    methods done and every method's ``status``, and ``Interrupted`` is raised. With
    ``resume=RUN_DIR`` the methods done there are kept, neither retrained nor re-evaluated.
    """
    check_config(cfg)
    resume = check_resume(cfg)
    kept = kept_results(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    out = Path(cfg["out"] or os.environ.get(OUT_ENV) or _default_out(cfg))
    cfg["out"] = str(out)
    is_rank0 = is_rank_zero()
    if is_rank0:
        make_out_dir(out)
    with RunProgress(cfg, out, write=is_rank0) as progress:
        return _run_methods(cfg, out, resume, kept, progress, is_rank0)


def make_out_dir(out: Path) -> None:
    """Create the run directory, or raise a ``ConfigError`` naming ``out`` (before any data is read)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "not a writable directory")
    except OSError as err:
        raise ConfigError(
            f"out={out}: cannot create the output directory ({err.strerror or err}): set out= to a directory "
            f"you can write to (default: runs/bench/<date-time> under the working directory)"
        ) from err


def _run_methods(
    cfg: dict[str, Any],
    out: Path,
    resume: dict[str, Path],
    kept: dict[str, dict[str, Any]],
    progress: RunProgress,
    is_rank0: bool,
) -> dict[str, Any] | None:
    with progress.immediate("loading data"):
        train, test = load_data(cfg)
        try:
            suite = SuiteContext.build(cfg, train, test, out)  # checks the eval.* suite settings before training
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if is_rank0:
            (out / "config.json").write_text(json.dumps(cfg, indent=2))
            log.info("writing to %s", out)
        e = cfg["eval"]
        floor = raw_pixel_floor(train, test, e["knn_k"], e["knn_temperature"]) if is_rank0 else float("nan")
    progress.floor = floor
    defer = world_size(cfg["trainer"]) > 1
    methods = progress.methods  # the results of the methods done, as results.json lists them
    pending: list[tuple[str, Fitted]] = []
    if defer and is_rank0:
        os.environ[OUT_ENV] = str(out)  # the processes Lightning launches inherit it
    try:
        for method in cfg["methods"]:
            if method in kept:
                progress.keep(method, kept[method])
                continue
            log.info("=== %s ===", method)
            stop = progress.training(method)
            fitted = fit_method(method, cfg, train, test, out, resume.get(method), callbacks=[stop])
            progress.trained(method, fitted.trainer.global_step)
            if fitted.trainer.global_rank != 0:
                continue
            if defer:
                pending.append((method, fitted))
            else:
                with progress.evaluating(method):
                    metrics = evaluate_fitted(method, fitted, cfg, train, test, out, suite)
                progress.done(method, metrics)
    finally:
        if is_rank0:
            os.environ.pop(OUT_ENV, None)
    if not is_rank0:
        return None
    for method, fitted in pending:
        with progress.evaluating(method):
            metrics = evaluate_fitted(method, fitted, cfg, train, test, out, suite)
        progress.done(method, metrics)
    results = progress.results()
    results["recipe"] = {
        "name": cfg.get("recipe", "authors"),
        "methods": {
            m: recipe_summary(cfg, m, total_steps(cfg, len(train)), world_size(cfg["trainer"])) for m in methods
        },
    }
    with progress.immediate("evaluation"):
        if suite.which and suite.controls:
            results["controls"] = evaluate_controls(cfg, suite, "cuda" if torch.cuda.is_available() else "cpu")
        if "embedding_map" in suite.which:
            results["embedding_map"] = write_map(suite, [*methods, *([RANDOM_INIT] if suite.controls else [])])
    results["machine"] = machine_info()
    validate_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_learning_curves({m: r["knn_curve_subset"] for m, r in methods.items()}, floor, out / "knn_curve.png")
    collapse = {m: r["collapse"] for m, r in methods.items() if r.get("collapse") and r["collapse"]["history"]}
    if collapse:
        k = next(iter(collapse.values())).get("knn_k", 8)
        plot_collapse({m: c["history"] for m, c in collapse.items()}, out / "collapse.png", k=k)
    plot_metric_bars(
        methods, ["knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1"], out / "metrics.png"
    )
    if suite.which:
        plot_suite_bars(suite_rows(results), out / "suite.png")
    write_report(results, out / "report.md")
    log.info("results: %s", out / "results.json")
    return results
