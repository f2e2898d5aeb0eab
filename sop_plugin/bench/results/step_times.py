"""Time every training step of one method of the benchmark (no evaluation): where a run gets slow.

Usage: python -m sop_plugin.bench.results.step_times METHOD OUT_DIR [hydra overrides...]
e.g.   python -m sop_plugin.bench.results.step_times sop runs/steps-sop profile=standard seed=0

Prints and writes OUT_DIR/steps.json: the fit's wall seconds, the sum, median, 90th/99th
percentile and max of the step times, the median per epoch and per 200 steps, and every
step's time; the ``retrieval=auto`` choices are logged as they happen.
``sop-bench`` keeps median, p90, max and sum in results.json; this shows when a slow phase happens.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.callbacks import StepTimer
from sop_plugin.bench.train.fit import fit_method


def summarise(times: list[float], epochs: int, fit_seconds: float) -> dict[str, Any]:
    n, ordered = len(times), sorted(times)
    per = max(1, n // max(1, epochs))
    return {
        "fit_seconds": fit_seconds,
        "steps": n,
        "sum": sum(times),
        "median": statistics.median(times),
        "p90": ordered[int(0.9 * (n - 1))],
        "p99": ordered[int(0.99 * (n - 1))],
        "max": ordered[-1],
        "per_epoch_median": [statistics.median(times[i : i + per]) for i in range(0, n, per)],
        "per_200_median": [statistics.median(times[i : i + 200]) for i in range(0, n, 200)],
    }


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    method, out = argv[0], Path(argv[1])
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("sop_plugin.retrieval").setLevel(logging.INFO)
    with initialize_config_module("sop_plugin.bench.conf", version_base="1.3"):
        shown = any(a.lstrip("+~").startswith("trainer.enable_progress_bar") for a in argv[2:])
        quiet = [] if shown else ["+trainer.enable_progress_bar=false"]
        cfg = OmegaConf.to_container(compose("config", overrides=[*quiet, *argv[2:]]), resolve=True)
    assert isinstance(cfg, dict)
    settings = bench_settings(cfg)
    train, test = load_data(settings)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fitted = fit_method(method, settings, train, test, out)
    timer = next(
        c for c in fitted.trainer.callbacks if isinstance(c, StepTimer)
    )  # the runner's own (every step)
    summary = summarise(timer.times, settings.train.epochs, time.perf_counter() - start)
    summary["overrides"] = argv[2:]
    print(json.dumps({k: v for k, v in summary.items() if k != "per_200_median"}, indent=1))
    (out / "steps.json").write_text(json.dumps({**summary, "times": timer.times}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
