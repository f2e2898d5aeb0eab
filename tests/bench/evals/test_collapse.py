"""Collapse diagnostics: the statistics on known matrices, the per-epoch callback, results/report/plot, the
checkpoint tool ``sop_plugin/bench/results/memory_spread.py``."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sop_plugin.bench.evals.collapse import (
    distribution_stats,
    effective_rank,
    filled_rows,
    knn_cosine,
    mean_pairwise_cosine,
    measure_module,
    se_anchor_cosine,
    spread,
    summarize_history,
)
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.results import collapse_study, memory_spread
from sop_plugin.bench.results.plots import plot_collapse
from sop_plugin.bench.results.report import write_report
from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.runner import run
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.fit import fit_method
from sop_plugin.bench.train.module import BenchModule
from sop_plugin.core import build_sop_sets, sample_anchors
from sop_plugin.runtime import load_checkpoint
from tests.tinydata import TINY_RUN, bench_config, compose_config


def _gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- the statistics
def test_effective_rank_of_known_matrices() -> None:
    assert effective_rank(_gaussian(2048, 32)) > 31.0  # an isotropic cloud uses every dimension
    assert effective_rank(_gaussian(4096, 256)) > 220.0
    assert effective_rank(torch.ones(50, 16)) == pytest.approx(1.0, abs=1e-6)  # identical rows
    assert effective_rank(torch.eye(16)) == pytest.approx(16.0, abs=1e-6)  # an orthonormal basis
    two = torch.cat([torch.eye(8)[:1].repeat(10, 1), torch.eye(8)[1:2].repeat(10, 1)])
    assert effective_rank(two) == pytest.approx(2.0, abs=1e-6)
    # row norms do not matter (rows are normalised), and fewer rows than dims works
    x = _gaussian(64, 32)
    scaled = x * torch.rand(64, 1, generator=torch.Generator().manual_seed(1)).add(0.1) * 100
    assert effective_rank(scaled) == pytest.approx(effective_rank(x), rel=1e-6)
    assert effective_rank(_gaussian(5, 32)) <= 5.0 + 1e-6
    # not centred: a shared offset makes rows alike and the rank drops towards 1
    assert effective_rank(_gaussian(2048, 32) * 0.05 + 1.0) < 5.0


def test_mean_pairwise_cosine_matches_brute_force() -> None:
    x = _gaussian(100, 8)
    z = torch.nn.functional.normalize(x.double(), dim=1)
    sims = z @ z.T
    brute = (sims.sum() - sims.diagonal().sum()) / (100 * 99)
    assert mean_pairwise_cosine(x) == pytest.approx(float(brute), abs=1e-10)
    assert mean_pairwise_cosine(torch.ones(7, 3)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)
    assert math.isnan(mean_pairwise_cosine(torch.ones(1, 3)))


@pytest.mark.parametrize("chunk", [1 << 24, 7])  # one block, and many small ones
def test_knn_cosine_matches_brute_force(chunk: int) -> None:
    x = _gaussian(60, 8)
    z = torch.nn.functional.normalize(x.double(), dim=1)
    sims = (z @ z.T).fill_diagonal_(-2.0)
    brute = sims.topk(8, dim=1).values.mean()
    assert knn_cosine(x, 8, chunk_elements=chunk) == pytest.approx(float(brute), abs=1e-6)
    assert knn_cosine(torch.ones(10, 4), 8) == pytest.approx(1.0)
    assert knn_cosine(torch.eye(4), 8) == pytest.approx(0.0)  # k capped at N - 1 = 3
    with pytest.raises(ValueError, match="k must be"):
        knn_cosine(x, 0)


def test_spread_of_random_rows_beats_collapsed_rows() -> None:
    random, collapsed = (
        spread(_gaussian(512, 32)),
        spread(_gaussian(512, 32) * 0.01 + _gaussian(1, 32, seed=3)),
    )
    assert random["erank"] > 25 > 2 > collapsed["erank"]
    assert random["mean_cos"] < 0.05 and collapsed["mean_cos"] > 0.99
    assert random["knn_cos"] < collapsed["knn_cos"]


def test_distribution_stats() -> None:
    k = 16
    uniform = distribution_stats(torch.full((10, k), 1.0 / k))
    assert uniform == pytest.approx({"max_prob": 1.0 / k, "entropy": 1.0, "usage_entropy": 1.0})
    same = distribution_stats(torch.eye(k)[[3] * 10])  # every row one-hot on one output: collapse
    assert same == pytest.approx({"max_prob": 1.0, "entropy": 0.0, "usage_entropy": 0.0}, abs=1e-9)
    spread_out = distribution_stats(torch.eye(k))  # one-hot, each on its own output: sharp and balanced
    assert spread_out == pytest.approx({"max_prob": 1.0, "entropy": 0.0, "usage_entropy": 1.0}, abs=1e-9)
    with pytest.raises(ValueError, match="probabilities"):
        distribution_stats(torch.ones(4))


def test_se_anchor_cosine_is_the_mean_se_similarity() -> None:
    memory = torch.nn.functional.normalize(
        _gaussian(200, 8).abs(), dim=1
    )  # positive cosines: weight = cosine
    anchors = sample_anchors(200, 6, 2, torch.Generator().manual_seed(0))
    sets = build_sop_sets(memory, anchors, 4, 0.1)
    se_weights = sets.weights.view(2, 6, 5)[:, :, 1:]
    assert se_anchor_cosine(sets.supports, 6) == pytest.approx(float(se_weights.mean()), abs=1e-6)
    one = sets[0]
    assert se_anchor_cosine(one.supports, 6) == pytest.approx(float(se_weights[0].mean()), abs=1e-6)
    with pytest.raises(ValueError, match="SOPs"):
        se_anchor_cosine(sets.supports[:, :6], 6)  # anchors without SEs


def test_filled_rows() -> None:
    bank = torch.arange(12.0).view(6, 2)
    ids = torch.tensor([4, -1, 0, -1, -1, 2])
    assert torch.equal(filled_rows(bank, ids), bank[[0, 2, 5]])
    assert filled_rows(bank, None) is bank
    with pytest.raises(ValueError, match="row ids"):
        filled_rows(bank, ids[:3])


# ---------------------------------------------------------------------- a module, measured
EXPECTED = {f"{s}_{k}" for s in ("backbone", "head") for k in ("erank", "mean_cos", "knn_cos")} | {
    "teacher_max_prob",
    "teacher_entropy",
    "teacher_usage_entropy",
}
SOP_ONLY = {"memory_erank", "memory_mean_cos", "memory_knn_cos", "memory_filled", "sop_se_cos"}


@pytest.mark.parametrize("method", ["sop", "dino", "ibot"])
def test_measure_module_at_init(method: str, tiny_data: Path, tmp_path: Path) -> None:
    cfg = bench_config(tmp_path, tiny_data)
    module = BenchModule(bench_settings(cfg).module(method, 10), 1, (0.5,), (0.5,))
    images = torch.randint(
        0, 255, (40, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    rng = torch.get_rng_state()
    stats = measure_module(module, images, step=0, k=8, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the measurement draws nothing from the global RNG
    assert set(stats) == EXPECTED | (SOP_ONLY if method == "sop" else set())
    assert 1.0 <= stats["head_erank"] <= 32.0 and 1.0 <= stats["backbone_erank"] <= 32.0
    assert -1.0 <= stats["head_mean_cos"] <= stats["head_knn_cos"] <= 1.0 + 1e-6
    assert 0.0 < stats["teacher_max_prob"] <= 1.0 and 0.0 <= stats["teacher_entropy"] <= 1.0 + 1e-9
    if method == "sop":
        assert stats["memory_filled"] == 0.0 and math.isnan(stats["memory_erank"])  # nothing enqueued yet
        assert 0.0 < stats["sop_se_cos"] < 1.0  # SEs of the random initial memory
    # the same numbers again: nothing random, nothing updated (e.g. no DINO centre)
    assert measure_module(module, images, step=0, k=8, seed=0) == pytest.approx(stats, nan_ok=True)


# ---------------------------------------------------------------------- results, report, plot
def _record(erank: float, sop: bool = False) -> dict:
    entry = {"head_erank": erank, "head_mean_cos": 0.9, "head_knn_cos": 0.999, "teacher_max_prob": 0.07}
    init = {**entry, "head_erank": 32.0, "epoch": 0.0, "step": 0.0, "seconds": 0.1}
    end = {**entry, "epoch": 1.0, "step": 10.0, "seconds": 0.1}
    if sop:  # the class memory is empty at initialisation
        init |= {"sop_se_cos": 0.25, "memory_erank": None}
        end |= {"sop_se_cos": 0.5, "memory_erank": 20.5}
    return summarize_history([init, end], 2048, 8)


def test_results_report_and_plot_hold_the_collapse_record(tmp_path: Path) -> None:
    from tests.bench.results.test_plots_report import RESULTS, _is_png

    results = copy.deepcopy(RESULTS)
    for name, r in results["methods"].items():
        r["collapse"] = _record(6.4 if name == "sop" else 4.3, sop=name == "sop")
    assert results["methods"]["sop"]["collapse"]["final"]["head_erank"] == 6.4
    validate_results(results)
    png = plot_collapse(
        {m: r["collapse"]["history"] for m, r in results["methods"].items()}, tmp_path / "c.png"
    )
    assert _is_png(png)
    text = write_report(results, tmp_path).read_text()
    assert "## Collapse diagnostics" in text and "2048 training images" in text
    rows = [line for line in text.splitlines() if line.startswith("| sop |")]
    assert rows[1] == "| sop | 0 | 32.0 | 0.900 | 0.999 | 0.070 | 0.250 | n/a |"  # the memory: empty at init
    assert rows[2] == "| sop | 1 | 6.4 | 0.900 | 0.999 | 0.070 | 0.500 | 20.5 |"
    assert "| dino | 1 | 4.3 | 0.900 | 0.999 | 0.070 | n/a | n/a |" in text and "head 8-NN cos" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.__setitem__("final", [1.0]), "'final'"),
        (lambda c: c["final"].__setitem__("head_erank", "6"), r"'final'\]\['head_erank'\]"),
        (lambda c: c["history"][1].pop("epoch"), r"'history'\]\[1\]\['epoch'\]"),
        (lambda c: c.__setitem__("history", {}), "'history'"),
    ],
)
def test_validate_results_checks_the_collapse_record(edit, message: str) -> None:
    from tests.bench.results.test_plots_report import RESULTS

    results = copy.deepcopy(RESULTS)
    results["methods"]["dino"]["collapse"] = _record(4.3)
    validate_results(results)
    edit(results["methods"]["dino"]["collapse"])
    with pytest.raises(ValueError, match=message):
        validate_results(results)


def test_seed_summary_has_the_final_collapse_statistics(tmp_path: Path) -> None:
    from sop_plugin.bench.results.summary import summarize, write_summary
    from tests.bench.results.test_plots_report import RESULTS

    runs = []
    for seed, erank in enumerate((6.0, 8.0)):
        r = copy.deepcopy(RESULTS) | {"seed": seed}
        for name, m in r["methods"].items():
            m["collapse"] = _record(erank, sop=name == "sop")
            m["knn_curve_subset"] = [[0.0, 60.0], [1.0, 70.0]]
        runs.append(r)
    summary = summarize(runs)
    assert summary["methods"]["sop"]["collapse.head_erank"]["mean"] == pytest.approx(7.0)
    assert summary["methods"]["sop"]["collapse.memory_erank"]["values"] == [20.5, 20.5]
    assert "collapse.memory_erank" not in summary["methods"]["dino"]
    write_summary(summary, runs, tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "| sop | 7.0 ± 1.4 | 0.900 ± 0.000 |" in text and "| dino | 7.0 ± 1.4 |" in text


# ---------------------------------------------------------------------- the callback in real runs
def test_bench_run_writes_collapse_everywhere(tiny_data: Path, tmp_path: Path) -> None:
    """3 steps of each method (a few seconds): metrics.csv, results.json, collapse.png, report."""
    out = tmp_path / "run"
    results = run(bench_config(out, tiny_data, ["eval.suite=[]", "eval.controls=false"]))
    assert results is not None
    for method, r in results["methods"].items():
        c = r["collapse"]
        assert c["probe_images"] == 96 and c["knn_k"] == 8
        assert [h["epoch"] for h in c["history"]] == [0.0, 1.0], method  # initialisation, then the epoch end
        assert [h["step"] for h in c["history"]] == [0.0, 3.0]
        assert set(c["final"]) == EXPECTED | (SOP_ONLY if method == "sop" else set())
        with open(out / method / "metrics.csv", newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("collapse/head_erank")]
        assert [float(row["epoch"]) for row in rows] == [0.0, 1.0]
        assert float(rows[-1]["collapse/head_erank"]) == pytest.approx(c["final"]["head_erank"])
        assert (
            float(rows[-1]["collapse/seconds"]) > 0 and "seconds" not in c["history"][-1]
        )  # timings: csv only
    sop = results["methods"]["sop"]["collapse"]["final"]
    assert sop["memory_filled"] == 3 * 16 and sop["memory_erank"] >= 1.0
    assert json.loads((out / "results.json").read_text())["methods"]["dino"]["collapse"]["history"]
    assert (out / "collapse.png").stat().st_size > 1000
    assert "## Collapse diagnostics" in (out / "report.md").read_text()


def test_collapse_every_n_steps_measures_within_epochs(tiny_data: Path, tmp_path: Path) -> None:
    """2 epochs of 6 steps, every 4 steps: steps 0, 4, 8, 12 at fractional epochs, the end measured once."""
    cfg = compose_config(
        TINY_RUN, tmp_path / "run", tiny_data, ["methods=[dino]", "eval.collapse_every_n_steps=4"]
    )
    train, test = load_data(bench_settings(cfg))
    record = fit_method("dino", bench_settings(cfg), train, test, tmp_path / "run").collapse
    assert record is not None
    assert [h["step"] for h in record["history"]] == [0.0, 4.0, 8.0, 12.0]
    assert [h["epoch"] for h in record["history"]] == [0.0, pytest.approx(0.667), pytest.approx(1.333), 2.0]
    assert all(h["head_erank"] is not None for h in record["history"])


@pytest.mark.slow
def test_collapse_history_survives_a_resume(tiny_data: Path, tmp_path: Path) -> None:
    """2 epochs of 6 steps, crash at step 9 (checkpoint at 8), resume: the straight run's history."""
    from tests.reliability.relutil import Crash, CrashAtStep

    straight_cfg = compose_config(TINY_RUN, tmp_path / "straight", tiny_data)
    train, test = load_data(bench_settings(straight_cfg))
    straight = fit_method("sop", bench_settings(straight_cfg), train, test, tmp_path / "straight").collapse
    assert straight is not None
    # eval.every_epoch=false in TINY_RUN: initialisation and the end of training only
    assert [h["epoch"] for h in straight["history"]] == [0.0, 2.0]

    cfg = compose_config(TINY_RUN, tmp_path / "resumed", tiny_data)
    with pytest.raises(Crash):
        fit_method("sop", bench_settings(cfg), train, test, tmp_path / "resumed", callbacks=[CrashAtStep(9)])
    last = tmp_path / "resumed" / "sop" / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(last)["callbacks"]
    assert [s["history"] for k, s in saved.items() if "CollapseMonitor" in k][0][0]["epoch"] == 0.0
    resumed = fit_method(
        "sop", bench_settings(cfg), train, test, tmp_path / "resumed", ckpt_path=last
    ).collapse
    assert resumed is not None
    assert [h["step"] for h in resumed["history"]] == [0.0, 12.0]
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert set(a) == set(b)
        for key in set(a) - {"seconds"}:
            assert (
                (b[key] is None) if a[key] is None else b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4)
            ), key


# ------------------------------------------------------------ sop_plugin/bench/results/memory_spread.py
class _Pickled:
    """An object of a class outside the safe loader's list."""


def _memory_spread() -> ModuleType:
    return memory_spread


def test_memory_spread_reads_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = _memory_spread()
    bank = torch.nn.functional.normalize(_gaussian(64, 16), dim=1)
    bank[40:] = bank[0]  # rows never filled: all alike, they must not count
    ids = torch.cat([torch.arange(40), torch.full((24,), -1)])
    state = {
        "objective.objective.class_memory.bank": bank,
        "objective.class_ids": ids,
        "student.w": torch.ones(3),
    }
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, ckpt)
    assert tool.main([str(ckpt), "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "40 of 64 rows (filled)" in printed and "effective rank" in printed
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["rows"] == 40 and got["global_step"] == 7 and got["key"].endswith("class_memory.bank")
    assert got["effective_rank"] == pytest.approx(effective_rank(bank[:40]))
    assert got["mean_pairwise_cosine"] == pytest.approx(mean_pairwise_cosine(bank[:40]))
    assert got["knn_cosine"] == pytest.approx(knn_cosine(bank[:40], 8), abs=1e-6)
    everything = tool.memory_spread(ckpt, all_rows=True, k=4)
    assert everything["rows"] == 64 and everything["knn_cosine"] == pytest.approx(
        knn_cosine(bank, 4), abs=1e-6
    )
    # a bare state dict (no class_ids) works too
    torch.save({"memory.class_memory.bank": bank}, tmp_path / "bare.pt")
    assert tool.memory_spread(tmp_path / "bare.pt")["rows"] == 64


def test_memory_spread_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _memory_spread()
    torch.save({"state_dict": {"student.w": torch.ones(3)}}, tmp_path / "dino.ckpt")
    assert tool.main([str(tmp_path / "dino.ckpt")]) == 2
    assert "class_memory.bank" in capsys.readouterr().err
    torch.save(
        {"state_dict": {"x": torch.ones(2)}, "evil": _Pickled()}, tmp_path / "unsafe.ckpt"
    )  # not allowed
    assert tool.main([str(tmp_path / "unsafe.ckpt")]) == 2
    assert "trust_checkpoint" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "missing.ckpt")]) == 2


# ------------------------------------------------------------ sop_plugin/bench/results/collapse_study.py
def test_collapse_study_puts_runs_side_by_side(tmp_path: Path) -> None:
    study = collapse_study
    runs = []
    for name, erank, sop in (
        ("sop_lr0.004_k0", 6.4, True),
        ("sop_lr0.004_k0.1", 30.0, True),
        ("dino", 4.3, False),
    ):
        run = tmp_path / name
        run.mkdir()
        method = "sop" if sop else "dino"
        result = {"knn_top1": 70.0 + erank / 10, "linear_top1": 75.0, "collapse": _record(erank, sop=sop)}
        (run / "results.json").write_text(json.dumps({"methods": {method: result}}))
        runs.append(str(run))
    out = tmp_path / "study"
    assert study.main([*runs, "--out", str(out)]) == 0
    table = (out / "study.md").read_text().splitlines()
    # memory: empty at initialisation, so its end value alone; no backbone statistic in the records
    assert (
        table[2] == "| sop_lr0.004_k0 | 70.64 | 75.00 | 32.0 → 6.4 | 0.999 → 0.999 |  | 0.070 → 0.070 | "
        "0.250 → 0.500 | 20.5 |  |"
    )
    assert (
        table[4] == "| dino | 70.43 | 75.00 | 32.0 → 4.3 | 0.999 → 0.999 |  | 0.070 → 0.070 |  |  |  |"
    )  # no SOP columns
    saved = json.loads((out / "study.json").read_text())["study"]
    assert saved["sop_lr0.004_k0.1"]["head_erank"] == {"init": 32.0, "final": 30.0}
    assert (out / "collapse_study.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # one label per run
        study.main([*runs, "--out", str(out), "--labels", "a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results.json"):
        study.main([str(tmp_path / "empty"), "--out", str(out)])
