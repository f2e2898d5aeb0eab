"""``sop-perf`` on a seconds-long setting writes perf.json in the documented layout, and its parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS
from sop_plugin.perf.agreement import gpu_retrieval_check
from sop_plugin.perf.breakdown import CATEGORIES, split_step
from sop_plugin.perf.cli import parse_args, run
from sop_plugin.perf.retrieval import auto_check, retrieval_table
from sop_plugin.perf.targets import check_targets


@pytest.fixture(scope="module")
def perf(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("perf")
    argv = [
        f"out={out}",
        "settings=tiny",
        "memories=1024",
        "queries=32,64",
        "retrieval_repeats=1",
        "isolate=false",
        "parts=step,retrieval",
        "device=cpu",
    ]
    run(parse_args(argv), argv)
    return json.loads((out / "perf.json").read_text()), out


@pytest.mark.slow
def test_perf_json_layout(perf: tuple[dict, Path]) -> None:
    data, out = perf
    machine = data["machine"]
    assert isinstance(machine, str) and ("uptime" in machine or "load" in machine)
    rec = data["step"]["tiny"]
    for m in ("sop", "ibot", "dino"):
        assert rec[m]["median_s"] > 0 and rec[m]["peak_mb"] > 0
    assert rec["ratio_sop_over_ibot"] == pytest.approx(rec["sop"]["median_s"] / rec["ibot"]["median_s"])
    assert rec["ratio_sop_over_dino"] == pytest.approx(rec["sop"]["median_s"] / rec["dino"]["median_s"])
    assert 0 < rec["retrieval_fraction"] < 1
    rows = data["retrieval"]
    assert {r["queries"] for r in rows} == {32, 64} and {r["memory"] for r in rows} == {1024}
    for r in rows:
        assert {"backend", "memory", "queries", "k", "median_s", "recall"} <= set(r)
        # every backend is exact
        assert r["backend"] in RETRIEVAL_BACKENDS and 0.99 < r["recall"] <= 1
    assert set(data["auto_choice"]) == {"1024"} and data["auto_choice"]["1024"] in RETRIEVAL_BACKENDS
    fractions = data["breakdown"]["tiny"]["fraction"]
    assert set(fractions) == set(CATEGORIES) and sum(fractions.values()) == pytest.approx(1.0, abs=1e-6)
    mean = data["breakdown"]["tiny"]["mean_s"]
    timed = set(CATEGORIES) - {"objective_other", "other"}  # the two remainders may be 0
    assert all(mean[c] > 0 for c in timed), mean  # every timing hook fired
    assert all(t["limit"] > 0 for t in data["targets"].values())
    assert (out / "perf.png").stat().st_size > 0


def test_auto_check_compares_with_the_fastest_it_measured() -> None:
    rows = [
        {"backend": "torch", "memory": 8, "queries": 256, "median_s": 2.0},
        {"backend": "faiss", "memory": 8, "queries": 256, "median_s": 1.0},
        {"backend": "auto", "memory": 8, "queries": 256, "median_s": 0.1},
    ]
    chk = auto_check(rows, {"8": "torch"}, {"8": {"torch": 1.0, "faiss": 3.0}})["8"]
    assert chk["fastest"] == "torch" and chk["ratio"] == 1.0
    assert chk["table_fastest"] == "faiss" and chk["table_ratio"] == 2.0
    bad = auto_check(rows, {"8": "faiss"}, {"8": {"torch": 1.0, "faiss": 3.0}})
    targets = check_targets({"auto_check": bad, "step": {}})
    assert targets["auto_8.ratio_to_fastest"]["met"] is False


def test_retrieval_table_rows_and_gpu_check_on_cpu() -> None:
    rows, choice, table = retrieval_table(
        [512], [16], 4, torch.device("cpu"), repeats=1, backends=["torch", "faiss", "auto"]
    )
    # auto at the middle query count only
    assert [r["backend"] for r in rows] == ["torch", "faiss", "auto"]
    assert choice["512"] in ("torch", "faiss") and set(table["512"]) >= {"torch", "faiss"}
    chk = gpu_retrieval_check(memory=1024, queries=100, k=4)
    assert chk["torch_cpu_vs_faiss_cpu"] > 0.99
    assert chk["cuda"] is torch.cuda.is_available()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected key=value"):
        parse_args(["outdir=x"])
    with pytest.raises(ValueError, match="unknown perf setting"):
        parse_args(["settings=vit_huge"])
    opts = parse_args(["repeats=4", "settings=vit_tiny_28,vit_tiny_224", "device=cpu"])
    assert opts["repeats"] == 4 and opts["settings"] == ["vit_tiny_28", "vit_tiny_224"]


def test_reference_settings_are_reported_but_not_checked() -> None:
    fast = {
        "sop": {"median_s": 1.0, "peak_mb": 1.0},
        "ibot": {"median_s": 1.0, "peak_mb": 1.0},
        "ratio_sop_over_ibot": 1.5,
        "ratio_sop_over_dino": 1.5,
    }
    step = {"vit_tiny_28": {**fast, "target_setting": True}, "quick_28": {**fast, "target_setting": False}}
    targets = check_targets({"step": step})
    assert targets["vit_tiny_28.ratio_sop_over_dino"]["met"] is False
    assert not any(name.startswith("quick_28.") for name in targets)
    assert parse_args(["device=cpu"])["settings"] == ["vit_tiny_28", "vit_tiny_224", "quick_28"]


def test_split_step_subtracts_nested_phases() -> None:
    raw = {
        "backbone": 4.0,
        "head": 1.0,
        "objective_total": 3.0,
        "sop_sets": 1.0,
        "retrieval": 0.25,
        "assignment": 0.5,
        "loss": 0.25,
        "memory_update": 0.125,
        "backward": 2.0,
    }
    out = split_step(raw, 10.0)
    assert tuple(out) == CATEGORIES
    assert out["sop_sets"] == 0.75 and out["retrieval"] == 0.25 and out["augment_masks"] == 0.0
    assert out["objective_other"] == pytest.approx(3.0 - 1.0 - 1.0 - 0.5 - 0.25 - 0.125)
    assert sum(out.values()) == pytest.approx(10.0)
