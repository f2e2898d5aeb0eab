"""The pieces of the GPU check that run without a GPU: agreement with ties, the device clocks off CUDA,
the stage-4 memory check and the summary table (benchmarks/gpu_run.sh runs them all; see
test_gpu_run_dry.py for the whole script)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sop_plugin.core.memory import SupportMemory
from sop_plugin.perf.agreement import retrieval_agreement, tie_aware_agreement
from sop_plugin.perf.cli import parse_args
from sop_plugin.perf.timing import EventSpan, KernelClock, device_busy_seconds
from tests.tinydata import load_benchmark_script


def test_ties_count_as_agreement_only_when_aside() -> None:
    q = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.0, 1.0]])  # rows 1 and 2 tie for q
    exact = torch.tensor([[0, 1]])
    assert tie_aware_agreement(torch.tensor([[0, 1]]), exact, q, pool) == (1.0, 1.0)
    assert tie_aware_agreement(torch.tensor([[0, 2]]), exact, q, pool) == (0.5, 1.0)  # a tie
    assert tie_aware_agreement(torch.tensor([[0, 3]]), exact, q, pool) == (0.5, 0.5)  # wrong


def test_retrieval_agreement_on_cpu_is_exact() -> None:
    rows = retrieval_agreement([512], queries=16, k=4, device="cpu", repeats=1)
    assert {r["backend"] for r in rows} == {"torch", "faiss"}
    for r in rows:
        assert r["available"] and r["memory"] == 512 and r["queries"] == 16
        assert r["index_agreement"] == r["agreement_ties_aside"] == 1.0
        assert not r["excluded_returned"] and r["median_s"] > 0 and "gpu_event_median_s" not in r


def test_clocks_measure_nothing_off_cuda() -> None:
    span = EventSpan(torch.device("cpu"))
    span.start()
    span.stop()
    assert span.seconds() is None
    clock = KernelClock()
    clock._prof = None
    assert clock.stop() is None


def test_device_busy_seconds_sums_device_events_only() -> None:
    from torch.autograd import DeviceType

    def event(kind: DeviceType, us: float) -> SimpleNamespace:
        return SimpleNamespace(device_type=kind, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event(DeviceType.CUDA, 1500.0), event(DeviceType.CPU, 9e6), event(DeviceType.CUDA, 500.0)]
    assert device_busy_seconds(events) == pytest.approx(0.002)


def test_perf_cli_knows_the_agreement_part() -> None:
    opts = parse_args(["parts=agreement", "device=cpu", "memories=1024", "check_queries=50"])
    assert opts["parts"] == ["agreement"] and opts["check_queries"] == 50
    with pytest.raises(ValueError, match="unknown"):
        parse_args(["parts=stepz", "device=cpu"])


def test_memory_fill_counts_rows_written_since_the_start(tmp_path: Path) -> None:
    check = load_benchmark_script("gpu_solo_check")
    mem = SupportMemory(64, 8, seed=5)
    mem.enqueue(torch.randn(12, 8), gather=False)
    state = {"method.objective.class_memory.bank": mem.bank, "method.objective.class_memory.ptr": mem.ptr}
    rec = check.memory_fill(state, tmp_path / "x.ckpt", written=12)
    assert rec["ok"] and rec["class_memory"]["changed_rows"] == 12 and rec["class_memory"]["seed"] == 5
    assert not check.memory_fill(state, tmp_path / "x.ckpt", written=20)["ok"]
    assert not check.memory_fill({}, tmp_path / "x.ckpt", written=12)["ok"]


def test_summary_table_says_what_is_missing(tmp_path: Path) -> None:
    summary = load_benchmark_script("gpu_summary")
    tsv = tmp_path / "stages.tsv"
    tsv.write_text(
        "1\tsop-perf step\tok\t12\t120\n4\tsolo\tskipped: no solo-learn\t0\t0\n3\tbench\ttimeout\t190\t190\n"
    )
    rows = summary.collect(tmp_path, tsv)
    assert [f[0] for f, _ in rows] == ["1", "3", "4"]
    text = summary.console(rows)
    assert "no perf.json" in text and "no bench_results.json" in text and "timeout" in text
    assert summary.markdown(rows).count("\n| ") == 3
