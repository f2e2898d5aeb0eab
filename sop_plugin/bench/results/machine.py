"""The machine a run ran on, for ``results.json`` under ``machine``.

Why: step and training times only compare within one machine; the summary lists every run's
machine so that a reader sees which timings may be set side by side. Read from ``/proc/cpuinfo``
where it exists (Linux), else from :mod:`platform`; the GPU name only when CUDA is available.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: CPU flags that change the speed of this benchmark's kernels (vector width, bf16, AMX tiles)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first value of every ``key : value`` line of ``/proc/cpuinfo`` (the first CPU's block)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """CPU model, logical cores (all, and usable by this process) and the :data:`ISA_FLAGS` it has."""
    if cpuinfo_text is None and CPUINFO.is_file():
        cpuinfo_text = CPUINFO.read_text(errors="replace")
    fields = _cpuinfo_fields(cpuinfo_text or "")
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
    }


def gpu_name() -> str | None:
    """The first CUDA device's name, or ``None`` without CUDA (or without torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def machine_info() -> dict[str, Any]:
    """What ``results.json`` records under ``machine``: CPU, OS, Python and, with CUDA, the GPU."""
    info = cpu_info()
    info["system"] = f"{platform.system()} {platform.release()}"
    info["arch"] = platform.machine()
    info["python"] = platform.python_version()
    info["gpu"] = gpu_name()
    return info


def describe(machine: dict[str, Any] | None) -> str:
    """One line for a summary: model, cores, flags, GPU; says so when a run did not record it."""
    if not machine:
        return "not recorded (results.json predates `machine`)"
    flags = ", ".join(machine.get("isa_flags") or []) or "none of " + "/".join(ISA_FLAGS)
    text = (
        f"{machine.get('cpu_model')}, {machine.get('cpu_usable')} of {machine.get('cpu_count')} cores, "
        f"{flags}"
    )
    if machine.get("gpu"):
        text += f"; GPU {machine['gpu']}"
    return text
