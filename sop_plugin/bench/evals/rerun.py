"""Re-run the evaluation suite on a finished run's checkpoints.

Usage: ``sop-bench-eval RUN_DIR [evals=...] [key=value ...]``.

Reads ``RUN_DIR/config.json`` and each method's ``RUN_DIR/<method>/checkpoints/last.ckpt``
(with the safe loader), re-runs the requested evaluations on the teacher backbones (no
training), and merges the numbers into ``RUN_DIR/results.json``, the report and the plots.
``key=value`` overrides change the run's config for the re-evaluation only, e.g.
``eval.finetune.epochs=5`` or ``methods=[sop]``; ``evals=`` takes a list of
``fewshot, finetune, seg, embedding_map`` (default: ``eval.suite`` of the run, or all);
``controls=false`` skips the random-init / raw-pixel controls.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from sop_plugin.bench.checks import ConfigError
from sop_plugin.bench.evals.suite import (
    RANDOM_INIT,
    SUITE,
    SuiteContext,
    check_suite,
    evaluate_backbone,
    evaluate_controls,
    write_map,
)
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.results.plots import plot_suite_bars
from sop_plugin.bench.results.report import suite_rows, write_report
from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.module import BenchModule
from sop_plugin.runtime import CheckpointError, load_checkpoint

log = logging.getLogger("sop_bench")

EXIT_BAD_INPUT = 2


def parse_overrides(items: list[str]) -> tuple[tuple[str, ...] | None, bool | None, dict[str, Any]]:
    """(``evals=`` list or None, ``controls=`` or None, the other ``key=value`` pairs as a nested dict)."""
    evals: tuple[str, ...] | None = None
    controls: bool | None = None
    rest = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        if key == "evals":
            evals = check_suite(v.strip() for v in value.strip("[]").split(",") if v.strip())
        elif key == "controls":
            controls = value.strip().lower() in ("1", "true", "yes")
        else:
            rest.append(item)
    nested = OmegaConf.to_container(OmegaConf.from_dotlist(rest)) if rest else {}
    return evals, controls, nested  # type: ignore[return-value]


def load_module(path: Path, trust_checkpoint: bool, device: torch.device) -> BenchModule:
    """A :class:`BenchModule` rebuilt from a checkpoint's hyper-parameters and weights."""
    ckpt = load_checkpoint(path, trust_checkpoint=trust_checkpoint)
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or "cfg" not in hp:
        raise CheckpointError(f"{path} has no sop-bench hyper-parameters: not a sop-bench checkpoint")
    try:
        settings = bench_settings(hp["cfg"]).module(hp["method"], int(hp["total_steps"]))
    except ConfigError as err:
        raise CheckpointError(f"{path}: its recorded config is not valid here ({err})") from err
    module = BenchModule(settings, hp["in_chans"], tuple(hp["mean"]), tuple(hp["std"]))
    module.load_state_dict(ckpt["state_dict"])
    return module.to(device).eval()


def reevaluate(
    run_dir: str | Path,
    evals: tuple[str, ...] | None = None,
    controls: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Re-run the suite on ``run_dir``'s checkpoints; returns (and writes) the merged results."""
    run_dir = Path(run_dir)
    config_path, results_path = run_dir / "config.json", run_dir / "results.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: RUN_DIR must be the `out` directory of a sop-bench run"
        )
    if not results_path.is_file():
        raise FileNotFoundError(
            f"{results_path} not found: the run has not finished; "
            f"finish it with `sop-bench resume={run_dir}` first"
        )
    cfg = json.loads(config_path.read_text())
    if overrides:
        cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(cfg), OmegaConf.create(overrides)))
    settings = bench_settings(cfg)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    results = json.loads(results_path.read_text())
    train, test = load_data(settings)
    ctx = SuiteContext.build(cfg, train, test, run_dir, which=evals)
    use_controls = ctx.controls if controls is None else controls
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods = [m for m in settings.methods if m in results.get("methods", {})]
    for method in methods:
        ckpt = run_dir / method / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            log.warning("no %s: %s keeps its earlier numbers", ckpt, method)
            continue
        log.info("=== %s: %s ===", method, ", ".join(ctx.which))
        module = load_module(ckpt, settings.trust_checkpoint, device)
        train_x = test_x = None
        emb = run_dir / "embeddings" / f"{method}.npz"
        if "fewshot" in ctx.which and emb.is_file():
            with np.load(emb) as data:  # the run's own features: the same numbers, none of the cost
                if "train_x" in data:
                    train_x, test_x = torch.from_numpy(data["train_x"]), torch.from_numpy(data["test_x"])
        if "embedding_map" in ctx.which and not emb.is_file():
            test_x = module.features(test.images)
            emb.parent.mkdir(parents=True, exist_ok=True)
            np.savez(emb, test_x=test_x.numpy(), test_y=test.labels.numpy())
        _merge(results["methods"][method], evaluate_backbone(module, ctx, method, train_x, test_x))
    if use_controls and ctx.which:
        controls_out = results.setdefault("controls", {})
        for name, values in evaluate_controls(settings, ctx, device).items():
            _merge(controls_out.setdefault(name, {}), values)
    if "embedding_map" in ctx.which:
        names = [*methods, *([RANDOM_INIT] if use_controls else [])]
        info = write_map(ctx, names)
        if info is not None:
            results["embedding_map"] = info
    validate_results(results)
    results_path.write_text(json.dumps(results, indent=2))
    _write_outputs(results, run_dir)
    log.info("results: %s", results_path)
    return results


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """New numbers replace old ones; ``suite_seconds`` keeps the timings of the evaluations not re-run."""
    seconds = {**into.get("suite_seconds", {}), **new.get("suite_seconds", {})}
    into.update(new)
    into["suite_seconds"] = seconds


def _write_outputs(results: dict[str, Any], run_dir: Path) -> None:
    """The suite's bar chart and the report, as the runner writes them."""
    rows = suite_rows(results)
    if rows:
        plot_suite_bars(rows, run_dir / "suite.png")
    write_report(results, run_dir / "report.md")


def main(argv: list[str] | None = None) -> None:
    """Console script ``sop-bench-eval``."""
    parser = argparse.ArgumentParser(
        prog="sop-bench-eval",
        description="Re-run the evaluation suite on a finished sop-bench run's checkpoints (no training).",
        epilog=f"evaluations: {', '.join(SUITE)}. Example: sop-bench-eval runs/bench/20250101-120000 "
        "evals=[seg,embedding_map] eval.seg.epochs=20",
    )
    parser.add_argument("run_dir", help="the `out` directory of a sop-bench run")
    parser.add_argument(
        "overrides", nargs="*", help="evals=[...], controls=true|false, or any config key=value"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        evals, controls, overrides = parse_overrides(args.overrides)
        reevaluate(args.run_dir, evals, controls, overrides)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"sop-bench-eval: error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
