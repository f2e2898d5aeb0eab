"""Run the side-by-side benchmark: train every method, evaluate, write results, report and plots."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from sop_plugin.bench.checks import ConfigError, check_resume
from sop_plugin.bench.evals.final import evaluate, raw_pixel_floor
from sop_plugin.bench.evals.suite import RANDOM_INIT, SuiteContext, evaluate_controls, write_map
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.results.machine import machine_info
from sop_plugin.bench.results.plots import (
    plot_collapse,
    plot_learning_curves,
    plot_metric_bars,
    plot_suite_bars,
)
from sop_plugin.bench.results.report import suite_rows, write_report
from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.settings import BenchSettings, bench_settings
from sop_plugin.bench.train.fit import Fitted, fit_method
from sop_plugin.bench.train.interruption import RunProgress, kept_results
from sop_plugin.bench.train.method_settings import recipe_summary
from sop_plugin.runtime import is_rank_zero

log = logging.getLogger("sop_bench")

#: rank 0 passes its output directory to the DDP processes Lightning launches
OUT_ENV = "SOP_BENCH_OUT"


def _default_out(cfg: dict[str, Any]) -> Path:
    resume = cfg.get("resume")
    if resume and Path(str(resume)).is_dir():
        return Path(str(resume))  # resuming a run directory continues writing into it
    return Path("runs/bench") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The whole benchmark; returns the results dict (rank 0) and writes everything under ``cfg['out']``.

    Every check (config, resume checkpoints, data) runs before any training. Under DDP
    every rank trains each method; rank 0 evaluates them all after the last one, so the
    other ranks never wait in a collective while rank 0 evaluates.

    SIGTERM / SIGINT (:mod:`sop_plugin.bench.train.interruption`): training stops at the next batch
    end with a checkpoint of that step, evaluation at once; ``results.json`` then holds the
    methods done and every method's ``status``, and ``Interrupted`` is raised. With
    ``resume=RUN_DIR`` the methods done there are kept, neither retrained nor re-evaluated.
    """
    out = Path(cfg["out"] or os.environ.get(OUT_ENV) or _default_out(cfg))
    settings = bench_settings({**cfg, "out": str(out)})  # config.json records where the run was written
    resume = check_resume(settings.source)
    kept = kept_results(settings.source)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    is_rank0 = is_rank_zero()
    if is_rank0:
        make_out_dir(out)
    with RunProgress(settings.source, out, write=is_rank0) as progress:
        return _run_methods(settings, out, resume, kept, progress, is_rank0)


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
    settings: BenchSettings,
    out: Path,
    resume: dict[str, Path],
    kept: dict[str, dict[str, Any]],
    progress: RunProgress,
    is_rank0: bool,
) -> dict[str, Any] | None:
    with progress.immediate("loading data"):
        train, test = load_data(settings)
        try:
            # checks the eval.* suite settings before training
            suite = SuiteContext.build(settings.source, train, test, out)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        e = settings.eval
        floor = float("nan")
        if is_rank0:
            (out / "config.json").write_text(json.dumps(settings.source, indent=2))
            log.info("writing to %s", out)
            floor = raw_pixel_floor(train, test, e.knn_k, e.knn_temperature)
    progress.floor = floor
    defer = settings.world > 1
    methods = progress.methods  # the results of the methods done, as results.json lists them
    pending: list[tuple[str, Fitted]] = []
    if defer and is_rank0:
        os.environ[OUT_ENV] = str(out)  # the processes Lightning launches inherit it
    try:
        for method in settings.methods:
            if method in kept:
                progress.keep(method, kept[method])
                continue
            log.info("=== %s ===", method)
            stop = progress.training(method)
            fitted = fit_method(method, settings, train, test, out, resume.get(method), callbacks=[stop])
            progress.trained(method, fitted.trainer.global_step)
            if fitted.trainer.global_rank != 0:
                continue
            if defer:
                pending.append((method, fitted))
            else:
                with progress.evaluating(method):
                    metrics = evaluate(fitted, e, settings.seed, train, test, out, suite)
                progress.done(method, metrics)
    finally:
        if is_rank0:
            os.environ.pop(OUT_ENV, None)
    if not is_rank0:
        return None
    for method, fitted in pending:
        with progress.evaluating(method):
            metrics = evaluate(fitted, e, settings.seed, train, test, out, suite)
        progress.done(method, metrics)
    results = progress.results()
    steps = settings.total_steps(len(train))
    recipes = {m: recipe_summary(settings.method[m], steps, settings.global_batch) for m in methods}
    results["recipe"] = {"name": settings.source.get("recipe", "authors"), "methods": recipes}
    with progress.immediate("evaluation"):
        if suite.which and suite.controls:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            results["controls"] = evaluate_controls(settings, suite, device)
        if "embedding_map" in suite.which:
            results["embedding_map"] = write_map(
                suite, [*methods, *([RANDOM_INIT] if suite.controls else [])]
            )
    results["machine"] = machine_info()
    validate_results(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_learning_curves({m: r["knn_curve_subset"] for m, r in methods.items()}, floor, out / "knn_curve.png")
    collapse = {
        m: r["collapse"] for m, r in methods.items() if r.get("collapse") and r["collapse"]["history"]
    }
    if collapse:
        k = next(iter(collapse.values())).get("knn_k", 8)
        plot_collapse({m: c["history"] for m, c in collapse.items()}, out / "collapse.png", k=k)
    plot_metric_bars(
        methods,
        ["knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1"],
        out / "metrics.png",
    )
    if suite.which:
        plot_suite_bars(suite_rows(results), out / "suite.png")
    write_report(results, out / "report.md")
    log.info("results: %s", out / "results.json")
    return results
