"""The machine line of perf.json: host, CPU, cores, RAM, torch, accelerator, threads and the load.

Timings are only comparable on the same machine at the same load, so every perf.json says where and
under what load it was measured (at the start and again at the end of the run).
"""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def machine_string(device: torch.device) -> str:
    """Host, CPU, cores, RAM, torch, accelerator, threads and the current load (uptime), in one line.

    ``device`` names the accelerator: its CUDA device name, or "no accelerator" off CUDA.
    """
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            ram = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        ram = "RAM unknown"
    acc = "no accelerator"
    if device.type == "cuda":
        acc = torch.cuda.get_device_name(device)
    host = f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {ram}, {acc}, torch {torch.__version__}"
    threads = f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}"
    return f"{host}, {threads}; {load_string()}"


def load_string() -> str:
    """The current load: ``uptime``'s line where the command runs, else the 1/5/15-minute load averages."""
    try:
        done = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "uptime: " + done.stdout.strip()
