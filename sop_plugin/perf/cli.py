"""``sop-perf``: SE retrieval per backend, SOP's step cost against iBOT and DINO, SOP's step breakdown.

Usage: ``sop-perf [out=DIR] [settings=vit_tiny_28,vit_tiny_224,quick_28] [repeats=N] [warmup=N]
[memories=8192,65536,1048576] [queries=64,256,512] [k=8] [device=auto|cpu|cuda]
[threads=N] [isolate=auto|true|false] [parts=step,retrieval,design,agreement]
[check_queries=1000] [profile_steps=2]``

``parts=agreement`` checks the neighbours found on ``device`` against an exact CPU search for each of
``memories`` (``check_queries`` anchors); it is not in the default parts.

Writes ``DIR/perf.json`` (layout in docs/performance.md) and ``DIR/perf.png``. Runs with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy (``sop_plugin.threads``).
"""

from __future__ import annotations

import sop_plugin.threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE unless set: before anything loads torch)

# isort: split
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sop_plugin.perf.breakdown import CATEGORIES
from sop_plugin.perf.retrieval import (
    auto_check,
    design_choices,
    gpu_retrieval_check,
    retrieval_agreement,
    retrieval_table,
)
from sop_plugin.perf.settings import METHODS, get_setting, resolve_config
from sop_plugin.perf.timing import in_thread, quiet_lightning

# sop_plugin.perf.step (the benchmark's module: Lightning, timm, lightly) is imported where the step part
# runs, so that parts=retrieval / agreement start in seconds

log = logging.getLogger("sop_perf")

LIMITS = {
    "ratio_sop_over_ibot": 1.0,
    "ratio_sop_over_dino": 1.1,
    "retrieval_fraction": 0.05,
    "auto_ratio": 1.2,
    "cpu_wall_s": 600.0,
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _words(text: str) -> list[str]:
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
        gpu = ["vit_small_224", "vit_tiny_224", "vit_tiny_28"]
        opts["settings"] = gpu if opts["device"].type == "cuda" else ["vit_tiny_28", "vit_tiny_224", "quick_28"]
    for name in opts["settings"]:
        get_setting(name)
    unknown = [p for p in opts["parts"] if p not in PARTS]
    if unknown:
        raise ValueError(f"parts={opts['parts']}: unknown {unknown}; choose from {list(PARTS)}")
    bad = [m for m in opts["methods"] if m not in METHODS]
    if bad or "sop" not in opts["methods"]:
        raise ValueError(f"methods={opts['methods']}: need sop and only names from {list(METHODS)}")
    return opts


def machine_string(device: torch.device) -> str:
    """Host, CPU, cores, RAM, torch, accelerator, threads and the current load (uptime)."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            ram = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        ram = "RAM unknown"
    acc = torch.cuda.get_device_name(device) if device.type == "cuda" else "no accelerator"
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {ram}, {acc}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}; {load_string()}"
    )


def load_string() -> str:
    try:
        return "uptime: " + subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------- step part


def _summarise_breakdown(steps: list[dict[str, float]]) -> dict[str, Any]:
    mean = {c: statistics.fmean(s[c] for s in steps) for c in CATEGORIES}
    fractions = [{c: s[c] / max(sum(s.values()), 1e-12) for c in CATEGORIES} for s in steps]
    return {
        "mean_s": mean,
        "fraction": {c: statistics.fmean(f[c] for f in fractions) for c in CATEGORIES},
        "steps": len(steps),
    }


def run_setting(name: str, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Step timing, peak memory and SOP's breakdown of one setting."""
    from sop_plugin.perf.step import peak_memory, time_methods

    setting = get_setting(name)
    cfg = resolve_config(setting)
    device = opts["device"]
    methods = tuple(opts["methods"])
    warmup = opts["warmup"] if opts["warmup"] is not None else setting.warmup
    steps = opts["repeats"] if opts["repeats"] is not None else setting.steps
    isolate = {"auto": device.type == "cpu", "true": True, "false": False}[opts["isolate"]]
    log.info("step timing %s: %s, %d warm-up + %d timed steps per method", name, setting.description, warmup, steps)
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
        rec = timing["steps"][m]
        out[m] = {
            "median_s": statistics.median(rec.wall),
            "peak_mb": peaks[m],
            "cpu_median_s": statistics.median(rec.cpu),
            "min_s": min(rec.wall),
            "steps_s": rec.wall,
        }
        if rec.gpu:  # CUDA: the device-side span of each timed step (CUDA events)
            out[m]["gpu_median_s"] = statistics.median(rec.gpu)
            out[m]["gpu_steps_s"] = rec.gpu
        if rec.kernel:  # CUDA: summed kernel time of the profiled steps, against the (unprofiled) step time
            out[m]["kernel_median_s"] = statistics.median(rec.kernel)
            out[m]["kernel_steps_wall_s"] = rec.kernel_wall  # the profiled steps themselves (profiler overhead)
            out[m]["gpu_busy_fraction"] = out[m]["kernel_median_s"] / out[m]["median_s"]
        elif device.type == "cuda" and opts["profile_steps"] > 0:
            out[m]["kernel_error"] = rec.kernel_error or "no profiled step"
    for other in ("ibot", "dino"):
        if other in methods:
            out[f"ratio_sop_over_{other}"] = out["sop"]["median_s"] / out[other]["median_s"]
            out[f"cpu_ratio_sop_over_{other}"] = out["sop"]["cpu_median_s"] / out[other]["cpu_median_s"]
    out["retrieval_fraction"] = timing["retrieval_fraction"]
    breakdown = _summarise_breakdown(timing["breakdown"]) if timing["breakdown"] else None
    return out, breakdown


# ---------------------------------------------------------------------------- targets


def check_targets(perf: dict[str, Any]) -> dict[str, Any]:
    """The must-show targets of the performance issue, each with its value, limit and verdict.

    Step settings whose record says ``target_setting: false`` (reference and diagnostic ones,
    such as ``quick_28``) are reported in ``step`` but not checked here.
    """
    out: dict[str, Any] = {}

    def put(name: str, value: float | None, limit: float) -> None:
        if value is not None:
            out[name] = {"value": value, "limit": limit, "met": bool(value <= limit)}

    for s, rec in perf.get("step", {}).items():
        if not rec.get("target_setting", True):
            continue
        put(f"{s}.ratio_sop_over_ibot", rec.get("ratio_sop_over_ibot"), LIMITS["ratio_sop_over_ibot"])
        put(f"{s}.ratio_sop_over_dino", rec.get("ratio_sop_over_dino"), LIMITS["ratio_sop_over_dino"])
        if "ibot" in rec:
            put(f"{s}.peak_mb_sop_over_ibot", rec["sop"]["peak_mb"] / rec["ibot"]["peak_mb"], 1.0)
        if "_224" in s:
            put(f"{s}.retrieval_fraction", rec.get("retrieval_fraction"), LIMITS["retrieval_fraction"])
    for mem, chk in perf.get("auto_check", {}).items():
        put(f"auto_{mem}.ratio_to_fastest", chk["ratio"], LIMITS["auto_ratio"])
    if perf.get("device") == "cpu":
        put("sop_perf_wall_s", perf.get("wall_s"), LIMITS["cpu_wall_s"])
    return out


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
        log.info("retrieval: memories %s, queries %s, k=%d on %s", opts["memories"], opts["queries"], opts["k"], device)
        rows, choice, table = in_thread(
            retrieval_table, opts["memories"], opts["queries"], opts["k"], device, opts["retrieval_repeats"]
        )
        perf["retrieval"], perf["auto_choice"], perf["auto_table"] = rows, choice, table
        perf["auto_check"] = auto_check(rows, choice, table)
        if device.type == "cuda":
            perf["gpu_retrieval_check"] = gpu_retrieval_check()
        _write(perf, out_dir)
    if "agreement" in opts["parts"]:
        log.info(
            "retrieval agreement: memories %s, %d queries, k=%d on %s against torch on the CPU",
            opts["memories"],
            opts["check_queries"],
            opts["k"],
            device,
        )
        perf["agreement"] = in_thread(
            retrieval_agreement, opts["memories"], opts["check_queries"], opts["k"], device, opts["retrieval_repeats"]
        )
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


def _write(perf: dict[str, Any], out_dir: Path) -> None:
    tmp = out_dir / "perf.json.tmp"
    tmp.write_text(json.dumps(perf, indent=2) + "\n")
    tmp.replace(out_dir / "perf.json")


def summary(perf: dict[str, Any]) -> str:
    """A few lines for the console."""
    lines = []
    for s, rec in perf["step"].items():
        parts = [_step_text(rec[m], m) for m in METHODS if m in rec]
        ratios = [f"{k.removeprefix('ratio_')} {v:.3f}" for k, v in rec.items() if k.startswith("ratio_")]
        frac = rec.get("retrieval_fraction")
        tag = "" if rec.get("target_setting", True) else " (reference, no targets)"
        lines.append(
            f"{s}{tag}: " + ", ".join(parts + ratios) + (f", retrieval {frac:.1%}" if frac is not None else "")
        )
    for r in perf.get("agreement", []):
        lines.append(_agreement_text(r))
    if perf.get("auto_choice"):
        lines.append("auto: " + ", ".join(f"{m} rows -> {b}" for m, b in perf["auto_choice"].items()))
    for name, t in perf.get("targets", {}).items():
        lines.append(f"  {'ok  ' if t['met'] else 'MISS'} {name} = {t['value']:.4g} (limit {t['limit']})")
    return "\n".join(lines)


def _step_text(rec: dict[str, Any], method: str) -> str:
    text = f"{method} {rec['median_s']:.3f} s"
    if "gpu_median_s" in rec:
        text += f" (GPU events {rec['gpu_median_s']:.3f} s"
        if "gpu_busy_fraction" in rec:
            text += f", kernels {rec['gpu_busy_fraction']:.0%} busy"
        text += ")"
    return text + f" / {rec['peak_mb']:.0f} MiB"


def _agreement_text(r: dict[str, Any]) -> str:
    head = f"agreement {r['backend']} on {r['device']}, {r['memory']} rows, {r['queries']} queries"
    if not r.get("available", False):
        return f"{head}: unavailable ({r.get('reason', '?')})"
    return (
        f"{head}: {r['median_s'] * 1e3:.2f} ms (CPU reference {r['reference_s'] * 1e3:.1f} ms), "
        f"agreement {r['index_agreement']:.5f}, ties aside {r['agreement_ties_aside']:.5f}, "
        f"excluded returned: {r['excluded_returned']}"
    )


def main(argv: list[str] | None = None) -> None:
    """Console script ``sop-perf``."""
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
