"""The final evaluation of a trained method, and the raw-pixel floor every method is read against."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sop_plugin.bench.evals.corruptions import corrupt
from sop_plugin.bench.evals.probes import knn_top1, linear_probe, raw_pixel_features, retrieval_metrics
from sop_plugin.bench.evals.suite import SuiteContext, evaluate_backbone
from sop_plugin.bench.results.plots import plot_sop_grid
from sop_plugin.bench.settings import EvalSettings
from sop_plugin.bench.train.callbacks import peak_rss_mb
from sop_plugin.bench.train.fit import Fitted
from sop_plugin.bench.train.module import BenchModule
from sop_plugin.data import ArrayDataset

log = logging.getLogger("sop_bench")


def evaluate(
    fitted: Fitted,
    settings: EvalSettings,
    seed: int,
    train: ArrayDataset,
    test: ArrayDataset,
    out: Path,
    suite: SuiteContext | None = None,
) -> dict[str, Any]:
    """Final evaluation of a trained method's teacher [CLS] features; saves the embeddings.

    Runs on rank 0; with ``suite``, the suite's evaluations too. The training's kNN curve, times
    and collapse diagnostics (:func:`~sop_plugin.bench.evals.collapse.summarize_history`) are stored
    beside the scores.
    """
    module = fitted.module
    method = module.method
    module.to("cpu" if not torch.cuda.is_available() else module.device)
    curve = fitted.curve
    steps = fitted.steps
    e = settings
    log.info("[%s] evaluating teacher features", method)
    train_x, test_x = module.features(train.images), module.features(test.images)
    knn = knn_top1(train_x, train.labels, test_x, test.labels, k=e.knn_k, temperature=e.knn_temperature)
    linear = linear_probe(train_x, train.labels, test_x, test.labels, epochs=e.linear_epochs, seed=seed)
    ret = retrieval_metrics(test_x, test.labels, max_queries=e.retrieval_max_queries, seed=seed)
    corrupted = {}
    for name in e.corruptions:
        cx = module.features(corrupt(test.images, name, seed=seed))
        corrupted[name] = knn_top1(
            train_x, train.labels, cx, test.labels, k=e.knn_k, temperature=e.knn_temperature
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
        _sop_grid(module, train, out / "sop_grid.png", e.sop_grid_rows, seed)
    extra = {}
    if suite is not None and suite.which:
        extra = evaluate_backbone(module, suite, method, train_x, test_x)
    return {
        "knn_top1": knn,
        "linear_top1": linear,
        "map_at_r": ret["map_at_r"],
        "recall_at_1": ret["recall_at_1"],
        "corrupt_knn_top1": float(np.mean(list(corrupted.values()))) if corrupted else float("nan"),
        "corrupt_knn_top1_by_corruption": corrupted,
        "random_init_knn_top1_subset": curve[0][1] if curve else None,
        "knn_curve_subset": [list(p) for p in curve],
        "train_seconds": fitted.seconds,
        "step_seconds_median": steps["median"],
        "step_seconds_p90": steps["p90"],
        "step_seconds_max": steps["max"],
        "step_seconds_sum": steps["sum"],  # train_seconds minus this: evaluation, checkpoints, loading
        "peak_rss_mb": peak_rss_mb(),
        "epochs": int(fitted.trainer.current_epoch),
        **extra,  # finetune_top1, fewshot_top1, seg_miou, seg_pixel_acc, ... (evals/suite.py)
        **({"collapse": fitted.collapse} if fitted.collapse is not None else {}),
    }


def _sop_grid(module: BenchModule, train: ArrayDataset, path: Path, rows: int, seed: int) -> None:
    try:
        anchors, supports, sims = module.objective.sop_examples(rows, seed=seed)
    except ValueError as err:
        log.warning("no SOP grid: %s", err)
        return
    plot_sop_grid(train.images[anchors.cpu()], train.images[supports.cpu()], path, similarities=sims.cpu())


def raw_pixel_floor(train: ArrayDataset, test: ArrayDataset, k: int, temperature: float) -> float:
    """kNN top-1 % on the raw pixels: the floor a learned representation has to pass."""
    return knn_top1(
        raw_pixel_features(train.images),
        train.labels,
        raw_pixel_features(test.images),
        test.labels,
        k=k,
        temperature=temperature,
    )
