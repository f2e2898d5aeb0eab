"""Step time of the quick profile's SOP step on a shared CPU: alone and next to one CPU-bound process.

Usage: ``python -m sop_plugin.bench.results.shared_cpu OUT_DIR [steps]``. Each condition runs
``sop_plugin/bench/results/step_times.py sop`` in a fresh process (so the OpenMP settings take effect
before torch loads) with the environment of the condition; ``busy`` conditions start one competing
process first (``python -c "while True: pass"``, one core busy, like a second training on the machine)
and stop it after. Writes ``OUT_DIR/shared_cpu.json`` with the median / p90 step seconds per condition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: (name, competing process?, environment changes); "default" is libgomp's own (nothing set: spin about
#: 300,000 times, then sleep), "passive" never spins, "spin-N" spins N times (GOMP_SPINCOUNT), then sleeps
CONDITIONS = [
    ("alone/default", False, {}),
    ("alone/passive", False, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("alone/spin-1000", False, {"GOMP_SPINCOUNT": "1000"}),
    ("alone/spin-10000", False, {"GOMP_SPINCOUNT": "10000"}),
    ("busy/default", True, {}),
    ("busy/passive", True, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("busy/spin-1000", True, {"GOMP_SPINCOUNT": "1000"}),
    ("busy/spin-10000", True, {"GOMP_SPINCOUNT": "10000"}),
    ("busy/1-thread", True, {"OMP_NUM_THREADS": "1"}),
]
#: the variables a condition sets; removed from the inherited environment first
OMP_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def run(out: Path, steps: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    overrides = [
        f"train.max_steps={steps}",
        f"train.limit_train_images={steps * 64}",
        "eval.every_epoch=false",
    ]
    for name, busy, env_changes in CONDITIONS:
        env = {k: v for k, v in os.environ.items() if k not in OMP_VARIABLES}
        env.update(env_changes)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(1.0 if busy else 0.0)
            run_dir = out / name.replace("/", "-")
            cmd = [
                sys.executable,
                "-m",
                "sop_plugin.bench.results.step_times",
                "sop",
                str(run_dir),
                *overrides,
            ]
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=1800)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        steps_json = json.loads((run_dir / "steps.json").read_text())
        results[name] = {
            "median_s": steps_json["median"],
            "p90_s": steps_json["p90"],
            "steps": steps_json["steps"],
        }
        print(f"{name:16s} median {steps_json['median']:.3f} s  p90 {steps_json['p90']:.3f} s", flush=True)
    return results


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    steps = int(argv[1]) if len(argv) > 1 else 30
    load_before = os.getloadavg()
    results = run(out, steps)
    record = {
        "steps_per_condition": steps,
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "conditions": results,
    }
    (out / "shared_cpu.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
