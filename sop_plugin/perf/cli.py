"""``sop-perf``: SE retrieval per backend, SOP's step cost against iBOT and DINO, SOP's step breakdown.

Usage: ``sop-perf [out=DIR] [settings=vit_tiny_28,vit_tiny_224,quick_28] [repeats=N] [warmup=N]
[memories=8192,65536,1048576] [queries=64,256,512] [k=8] [device=auto|cpu|cuda]
[threads=N] [isolate=auto|true|false] [parts=step,retrieval,design,agreement]
[check_queries=1000] [profile_steps=2]``

``parts=agreement`` checks the neighbours found on ``device`` against an exact CPU search for each of
``memories`` (``check_queries`` anchors); it is not in the default parts.

Writes ``DIR/perf.json`` (layout in docs/performance.md) and ``DIR/perf.png``. The ``sop-perf``
console script (:mod:`sop_plugin.launchers`) runs it with ``OMP_WAIT_POLICY=PASSIVE`` unless the
environment sets a policy (:mod:`sop_plugin.threads`); ``python -m sop_plugin.perf.cli`` leaves the
policy to the environment, as importing this module loads torch.

The parts live in their own modules: :mod:`~sop_plugin.perf.step` and :mod:`~sop_plugin.perf.memory`
(step), :mod:`~sop_plugin.perf.retrieval` (retrieval), :mod:`~sop_plugin.perf.design` (design),
:mod:`~sop_plugin.perf.agreement` (agreement); the verdicts are :mod:`~sop_plugin.perf.targets`',
the console lines :mod:`~sop_plugin.perf.summary`'s.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sop_plugin.perf.agreement import gpu_retrieval_check, retrieval_agreement
from sop_plugin.perf.breakdown import CATEGORIES
from sop_plugin.perf.design import design_choices
from sop_plugin.perf.machine import load_string, machine_string
from sop_plugin.perf.retrieval import auto_check, retrieval_table
from sop_plugin.perf.settings import METHODS, get_setting, resolve_config
from sop_plugin.perf.summary import summary
from sop_plugin.perf.targets import check_targets
from sop_plugin.perf.timing import in_thread, quiet_lightning

# sop_plugin.perf.step and .memory (the benchmark's module: Lightning, timm, lightly) are imported where
# the step part runs, so that parts=retrieval / agreement start in seconds

log = logging.getLogger("sop_perf")


def _ints(text: str) -> list[int]:
    """``"8192,65536"`` -> ``[8192, 65536]`` (empty items skipped)."""
    return [int(v) for v in text.split(",") if v]


def _words(text: str) -> list[str]:
    """``"step,retrieval"`` -> ``["step", "retrieval"]`` (empty items skipped)."""
    return [v for v in text.split(",") if v]


#: argument -> (parser, default); ``None`` defaults depend on the device
ARGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "out": (str, "runs/perf"),
    "settings": (_words, None),
    "repeats": (int, None),
    "warmup": (int, None),
    "memories": (_ints, [8192, 65536, 1048576]),
    "queries": (_ints, [64, 256, 512]),
    "k": (int, 8),
    "retrieval_repeats": (int, 3),
    "device": (str, "auto"),
    "threads": (int, None),
    "isolate": (str, "auto"),
    "parts": (_words, ["step", "retrieval", "design"]),
    "methods": (_words, list(METHODS)),
    "check_queries": (int, 1000),
    "profile_steps": (int, 2),
}

PARTS = ("step", "retrieval", "design", "agreement")

#: the step settings timed by default, on CUDA and on the CPU
DEFAULT_SETTINGS = {
    "cuda": ["vit_small_224", "vit_tiny_224", "vit_tiny_28"],
    "cpu": ["vit_tiny_28", "vit_tiny_224", "quick_28"],
}


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments (see :data:`ARGS`) -> options; raises ``ValueError`` naming the bad one."""
    opts = {key: default for key, (_, default) in ARGS.items()}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ARGS:
            raise ValueError(f"bad argument {arg!r}: expected key=value with key in {sorted(ARGS)}")
        opts[key] = ARGS[key][0](value)
    device = opts["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    opts["device"] = torch.device(device)
    if opts["settings"] is None:
        kind = "cuda" if opts["device"].type == "cuda" else "cpu"
        opts["settings"] = list(DEFAULT_SETTINGS[kind])
    for name in opts["settings"]:
        get_setting(name)
    unknown = [p for p in opts["parts"] if p not in PARTS]
    if unknown:
        raise ValueError(f"parts={opts['parts']}: unknown {unknown}; choose from {list(PARTS)}")
    bad = [m for m in opts["methods"] if m not in METHODS]
    if bad or "sop" not in opts["methods"]:
        raise ValueError(f"methods={opts['methods']}: need sop and only names from {list(METHODS)}")
    return opts


# ---------------------------------------------------------------------------- step part


def _summarise_breakdown(steps: list[dict[str, float]]) -> dict[str, Any]:
    """SOP's per-step category seconds -> their mean seconds and mean share of the step, per category."""
    mean = {c: statistics.fmean(s[c] for s in steps) for c in CATEGORIES}
    fractions = [{c: s[c] / max(sum(s.values()), 1e-12) for c in CATEGORIES} for s in steps]
    return {
        "mean_s": mean,
        "fraction": {c: statistics.fmean(f[c] for f in fractions) for c in CATEGORIES},
        "steps": len(steps),
    }


def _method_record(rec: Any, peak_mb: float, device: torch.device, profile_steps: int) -> dict[str, Any]:
    """One method's step record in perf.json from its :class:`~sop_plugin.perf.step.StepTiming`."""
    out: dict[str, Any] = {
        "median_s": statistics.median(rec.wall),
        "peak_mb": peak_mb,
        "cpu_median_s": statistics.median(rec.cpu),
        "min_s": min(rec.wall),
        "steps_s": rec.wall,
    }
    if rec.gpu:  # CUDA: the device-side span of each timed step (CUDA events)
        out["gpu_median_s"] = statistics.median(rec.gpu)
        out["gpu_steps_s"] = rec.gpu
    if rec.kernel:  # CUDA: summed kernel time of the profiled steps, against the (unprofiled) step time
        out["kernel_median_s"] = statistics.median(rec.kernel)
        out["kernel_steps_wall_s"] = rec.kernel_wall  # the profiled steps themselves (profiler overhead)
        out["gpu_busy_fraction"] = out["kernel_median_s"] / out["median_s"]
    elif device.type == "cuda" and profile_steps > 0:
        out["kernel_error"] = rec.kernel_error or "no profiled step"
    return out


def run_setting(name: str, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Step timing, peak memory and SOP's breakdown of one setting: (its step record, its breakdown)."""
    from sop_plugin.perf.memory import peak_memory
    from sop_plugin.perf.step import time_methods

    setting = get_setting(name)
    cfg = resolve_config(setting)
    device = opts["device"]
    methods = tuple(opts["methods"])
    warmup = opts["warmup"] if opts["warmup"] is not None else setting.warmup
    steps = opts["repeats"] if opts["repeats"] is not None else setting.steps
    isolate = {"auto": device.type == "cpu", "true": True, "false": False}[opts["isolate"]]
    what = f"{setting.description}, {warmup} warm-up + {steps} timed steps per method"
    log.info("step timing %s: %s", name, what)
    timing = time_methods(
        cfg,
        setting.channels,
        device,
        warmup,
        steps,
        methods,
        breakdown_steps=max(3, steps // 2),
        profile_steps=opts["profile_steps"],
    )
    log.info("peak memory %s (%s)", name, "a fresh process per method" if isolate else "in process")
    peaks = peak_memory(cfg, methods, setting.channels, device, isolate)
    out: dict[str, Any] = {
        "description": setting.description,
        "device": device.type,
        "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
        "batch_size": cfg["train"]["batch_size"],
        "warmup_steps": warmup,
        "timed_steps": steps,
        "target_setting": setting.targets,
    }
    for m in methods:
        out[m] = _method_record(timing["steps"][m], peaks[m], device, opts["profile_steps"])
    for other in ("ibot", "dino"):
        if other in methods:
            out[f"ratio_sop_over_{other}"] = out["sop"]["median_s"] / out[other]["median_s"]
            out[f"cpu_ratio_sop_over_{other}"] = out["sop"]["cpu_median_s"] / out[other]["cpu_median_s"]
    out["retrieval_fraction"] = timing["retrieval_fraction"]
    breakdown = _summarise_breakdown(timing["breakdown"]) if timing["breakdown"] else None
    return out, breakdown


# ---------------------------------------------------------------------------- main


def run(opts: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """Every requested part; returns the perf.json dict (also written to ``out``)."""
    start = time.perf_counter()
    device = opts["device"]
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    out_dir = Path(opts["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    perf: dict[str, Any] = {
        "machine": machine_string(device),
        "device": device.type,
        "command": "sop-perf " + " ".join(argv),
        "step": {},
        "breakdown": {},
        "retrieval": [],
        "auto_choice": {},
    }
    if "step" in opts["parts"]:
        for name in opts["settings"]:
            perf["step"][name], breakdown = run_setting(name, opts)
            if breakdown is not None:
                perf["breakdown"][name] = breakdown
            _write(perf, out_dir)  # partial results survive an interrupted run
    if "retrieval" in opts["parts"]:
        _retrieval_part(perf, opts)
        _write(perf, out_dir)
    if "agreement" in opts["parts"]:
        _agreement_part(perf, opts)
        _write(perf, out_dir)
    if "design" in opts["parts"]:
        log.info("design choices: searching a memory that changes every step (CPU)")
        perf["design_choices"] = in_thread(design_choices, 65536, 4, 64, opts["k"], opts["retrieval_repeats"])
    perf["wall_s"] = time.perf_counter() - start
    perf["machine"] += f"; at the end {load_string()}"
    perf["targets"] = check_targets(perf)
    _write(perf, out_dir)
    try:
        from sop_plugin.perf.plot import plot_perf
    except ImportError as err:  # e.g. a GPU box without matplotlib: the JSON is what counts
        log.warning("no perf.png: %s", err)
    else:
        plot_perf(perf, out_dir / "perf.png")
    return perf


def _retrieval_part(perf: dict[str, Any], opts: dict[str, Any]) -> None:
    """The retrieval table, ``auto``'s choices and their check (and on CUDA the GPU check) into ``perf``."""
    device, memories, queries, k = opts["device"], opts["memories"], opts["queries"], opts["k"]
    log.info("retrieval: memories %s, queries %s, k=%d on %s", memories, queries, k, device)
    found = in_thread(retrieval_table, memories, queries, k, device, opts["retrieval_repeats"])
    perf["retrieval"], perf["auto_choice"], perf["auto_table"] = found
    perf["auto_check"] = auto_check(*found)
    if device.type == "cuda":
        perf["gpu_retrieval_check"] = gpu_retrieval_check()


def _agreement_part(perf: dict[str, Any], opts: dict[str, Any]) -> None:
    """The neighbours found on ``device`` against an exact CPU search, per memory size, into ``perf``."""
    device, memories, queries, k = opts["device"], opts["memories"], opts["check_queries"], opts["k"]
    what = f"memories {memories}, {queries} queries, k={k} on {device}"
    log.info("retrieval agreement: %s against torch on the CPU", what)
    repeats = opts["retrieval_repeats"]
    perf["agreement"] = in_thread(retrieval_agreement, memories, queries, k, device, repeats)


def _write(perf: dict[str, Any], out_dir: Path) -> None:
    """``out_dir/perf.json``, replaced atomically (a reader never sees half a file)."""
    tmp = out_dir / "perf.json.tmp"
    tmp.write_text(json.dumps(perf, indent=2) + "\n")
    tmp.replace(out_dir / "perf.json")


def main(argv: list[str] | None = None) -> None:
    """Console script ``sop-perf`` (run by :func:`sop_plugin.launchers.sop_perf`); exit status 2 on a bad
    argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quiet_lightning()
    try:
        opts = parse_args(argv)
    except ValueError as err:
        print(f"sop-perf: error: {err}", file=sys.stderr)
        sys.exit(2)
    perf = run(opts, argv)
    print(summary(perf))
    print(f"wrote {Path(opts['out']) / 'perf.json'} and perf.png in {perf['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
