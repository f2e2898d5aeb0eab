"""sop_plugin.bench.results.machine: the CPU and GPU a run records in results.json.

The CPU record: model, cores, ISA flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sop_plugin.bench.results.machine import ISA_FLAGS, cpu_info, describe, machine_info
from sop_plugin.bench.results.summary import main as summary_main
from sop_plugin.bench.runner import run
from tests.tinydata import bench_config

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_cpu_info_reads_model_and_flags_of_interest() -> None:
    info = cpu_info(CPUINFO)
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480C"
    assert info["isa_flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert info["cpu_count"] >= 1 and 1 <= info["cpu_usable"] <= info["cpu_count"]


def test_machine_info_is_json_ready_and_described_in_one_line() -> None:
    info = machine_info()
    assert json.loads(json.dumps(info)) == info
    assert set(info["isa_flags"]) <= set(ISA_FLAGS)
    assert str(info["cpu_usable"]) in describe(info)
    assert describe({**info, "gpu": "NVIDIA H200"}).endswith("; GPU NVIDIA H200")
    assert describe(None).startswith("not recorded")


@pytest.mark.slow
def test_a_bench_run_records_its_machine_and_the_summary_lists_it(tiny_data: Path, tmp_path: Path) -> None:
    """One tiny method run (a few seconds): ``machine`` in results.json, then in the summary's run list."""
    out = tmp_path / "run"
    run(bench_config(out, tiny_data, ["methods=[dino]", "eval.suite=[]", "eval.controls=false"]))
    recorded = json.loads((out / "results.json").read_text())["machine"]
    assert recorded["cpu_model"] and recorded["cpu_usable"] >= 1
    summary_main([str(out), "--out", str(tmp_path / "summary")])
    assert describe(recorded) in (tmp_path / "summary/summary.md").read_text()
