"""``python -m sop_plugin.bench.results.summary``: several runs aggregated into one summary.

Seeds aggregated per method, one method taken from another run, controls and few-shot aggregated,
paired verdicts, timings compared only within a run, machines listed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sop_plugin.bench.results.summary import main, summarize
from tests.bench.results.test_plots_report import RESULTS


def _results(seed: int, knn: float, sop_step: float = 0.05) -> dict[str, Any]:
    r = copy.deepcopy(RESULTS) | {"seed": seed}
    for m in r["methods"].values():
        m["knn_top1"] = knn
        m["linear_top1"] = knn
        m["knn_curve_subset"] = [[0.0, 60.0], [1.0, knn]]
    r["methods"]["sop"]["step_seconds_median"] = sop_step
    return r


def _run(tmp_path: Path, name: str, seed: int, knn: float, **extra: Any) -> str:
    r = _results(seed, knn) | extra
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(r))
    return str(d)


def test_a_method_rerun_alone_replaces_its_column_for_that_seed(tmp_path: Path) -> None:
    seed0 = _run(tmp_path, "seed0", 0, 80.0)
    seed1 = _run(tmp_path, "seed1", 1, 70.0)  # iBOT here is at an old default
    ibot1 = _run(tmp_path, "ibot1", 1, 90.0)  # iBOT alone at the new one
    main([seed0, f"{seed1}:sop,dino", f"{ibot1}:ibot", "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["runs"] == 2
    assert summary["methods"]["ibot"]["knn_top1"]["values"] == [80.0, 90.0]
    assert summary["methods"]["sop"]["knn_top1"]["values"] == [80.0, 70.0]
    assert summary["methods"]["ibot"]["seeds"] == [0, 1]
    assert list(summary["methods"]) == ["sop", "dino", "ibot"]
    assert "| iBOT | 85.00 ± 7.07 |" in (tmp_path / "out/summary.md").read_text()


def test_runs_recorded_under_different_profile_names_keep_every_name(tmp_path: Path) -> None:
    seed0 = _run(tmp_path, "seed0", 0, 80.0, profile="standard")
    seed1 = _run(tmp_path, "seed1", 1, 81.0, profile="long")
    seed2 = _run(tmp_path, "seed2", 2, 82.0, profile="long")
    main([seed0, seed1, seed2, "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out/summary.json").read_text())["profile"] == "standard / long"
    assert (tmp_path / "out/summary.md").read_text().startswith("# standard / long profile on")


def test_a_method_twice_for_one_seed_or_missing_is_refused(tmp_path: Path) -> None:
    seed1 = _run(tmp_path, "seed1", 1, 70.0)
    ibot1 = _run(tmp_path, "ibot1", 1, 90.0)
    with pytest.raises(SystemExit, match="ibot appears twice for one seed"):
        main([seed1, f"{ibot1}:ibot", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="has no method \\['mae'\\]"):
        main([f"{seed1}:mae", "--out", str(tmp_path / "out")])


def test_every_metric_and_pair_gets_paired_differences_and_a_verdict() -> None:
    runs = [_results(s, 80.0) for s in range(3)]
    for r, gap in zip(runs, (1.0, 1.2, 0.9)):
        r["methods"]["sop"]["knn_top1"] += gap  # SOP ahead of both on kNN in every seed, by a steady margin
        r["methods"]["dino"]["linear_top1"] += gap - 1.05  # DINO - iBOT linear changes sign: level
    s = summarize(runs)
    knn = s["comparisons"]["knn_top1"]
    assert set(knn) == {"sop-dino", "sop-ibot", "dino-ibot"}
    assert knn["sop-ibot"]["diffs"] == pytest.approx([1.0, 1.2, 0.9])
    assert knn["sop-ibot"]["verdict"] == "ahead" and knn["sop-ibot"]["ci95_t"][0] > 0
    assert knn["dino-ibot"]["verdict"] == "level" and knn["dino-ibot"]["mean"] == 0.0
    assert s["comparisons"]["linear_top1"]["dino-ibot"]["verdict"] == "level"
    assert s["comparisons"]["linear_top1"]["dino-ibot"]["diffs"] == pytest.approx([-0.05, 0.15, -0.15])


def test_one_seed_gives_level_without_an_interval() -> None:
    r = _results(0, 80.0)
    r["methods"]["sop"]["knn_top1"] = 85.0
    p = summarize([r])["comparisons"]["knn_top1"]["sop-dino"]
    assert p["diffs"] == [5.0] and p["ci95_t"] is None and p["ci95_bootstrap"] is None
    assert p["verdict"] == "level"


def _with_controls(seed: int, knn: float) -> dict[str, Any]:
    r = _results(seed, knn)
    for m in r["methods"].values():
        m["finetune_top1"] = 85.0 + seed
        m["fewshot_top1"] = {"1pct": 70.0 + seed, "10pct": 78.0}
        m["random_init_knn_top1_subset"] = 67.0
    r["controls"] = {
        "random_init": {"finetune_top1": 83.0, "fewshot_top1": {"1pct": 64.0 + 2 * seed, "10pct": 73.0}},
        "raw_pixels": {"seg_miou": 14.0},
    }
    return r


def test_controls_and_few_shot_are_aggregated_with_each_methods_gap() -> None:
    runs = [_with_controls(0, 80.0), _with_controls(1, 82.0), _with_controls(2, 81.0)]
    s = summarize(runs)
    assert s["methods"]["sop"]["fewshot_top1.1pct"]["mean"] == pytest.approx(71.0)
    ri = s["controls"]["random_init"]
    assert ri["fewshot_top1.1pct"]["values"] == [64.0, 66.0, 68.0] and ri["fewshot_top1.1pct"]["std"] == 2.0
    assert ri["knn_top1_subset"]["mean"] == 67.0
    assert s["controls"]["raw_pixels"]["knn_top1"]["values"] == [84.59] * 3
    gaps = s["control_gaps"]["sop"]
    assert gaps["raw_pixels"]["knn_top1"]["diffs"] == pytest.approx([-4.59, -2.59, -3.59])
    assert gaps["raw_pixels"]["knn_top1"]["verdict"] == "behind"  # does not pass the raw-pixel floor
    assert gaps["random_init"]["finetune_top1"]["verdict"] == "ahead"
    assert gaps["random_init"]["fewshot_top1.1pct"]["diffs"] == [6.0, 5.0, 4.0]


def test_controls_come_from_the_first_run_of_the_seed_that_has_them(tmp_path: Path) -> None:
    plain = _run(tmp_path, "ibot0", 0, 80.0)  # e.g. a method re-run alone with eval.controls=false
    full = tmp_path / "seed0"
    full.mkdir()
    (full / "results.json").write_text(json.dumps(_with_controls(0, 80.0)))
    main([f"{plain}:ibot", f"{full}:sop,dino", "--out", str(tmp_path / "out")])
    s = json.loads((tmp_path / "out/summary.json").read_text())
    assert s["controls"]["random_init"]["finetune_top1"]["runs"] == [str(full)]


def test_timings_are_ratios_within_a_run_never_means_over_runs(tmp_path: Path) -> None:
    seed0 = _run(tmp_path, "seed0", 0, 80.0)
    seed1 = _run(tmp_path, "seed1", 1, 80.0)
    ibot1 = _run(tmp_path, "ibot1", 1, 80.0)
    main([seed0, f"{seed1}:sop,dino", f"{ibot1}:ibot", "--out", str(tmp_path / "out")])
    s = json.loads((tmp_path / "out/summary.json").read_text())
    assert "step_seconds_median" not in s["methods"]["sop"] and "train_seconds" not in s["methods"]["sop"]
    rows = s["timing_ratios"]["sop/ibot"]["step_seconds_median"]
    assert rows == [{"run": seed0, "seed": 0, "ratio": pytest.approx(1.0)}]  # seed 1's iBOT ran elsewhere
    assert len(s["timing_ratios"]["sop/dino"]["step_seconds_median"]) == 2
    text = (tmp_path / "out/summary.md").read_text()
    assert "median step s" in text and "step_seconds_median" not in text and "train_seconds" not in text


def test_a_run_that_shared_the_cores_gives_no_time_ratio(tmp_path: Path) -> None:
    seed0 = _run(tmp_path, "seed0", 0, 80.0)
    seed1 = _run(tmp_path, "seed1", 1, 81.0)
    main([seed0, seed1, "--untimed", seed1, "--out", str(tmp_path / "out")])
    s = json.loads((tmp_path / "out/summary.json").read_text())
    assert s["untimed"] == [seed1]
    for measures in s["timing_ratios"].values():
        for rows in measures.values():
            assert [row["run"] for row in rows] == [seed0]
    assert s["methods"]["sop"]["knn_top1"]["seeds"] == [0, 1]  # its accuracies still count
    assert (
        f"Not timed (the run shared the cores with other work): `{seed1}`."
        in (tmp_path / "out/summary.md").read_text()
    )


def test_the_summary_lists_the_machines_of_its_runs(tmp_path: Path) -> None:
    machine = {
        "cpu_model": "Xeon Test",
        "cpu_count": 4,
        "cpu_usable": 2,
        "isa_flags": ["avx512f", "amx_tile"],
    }
    seed0 = _run(tmp_path, "seed0", 0, 80.0, machine=machine)
    seed1 = _run(tmp_path, "seed1", 1, 80.0)
    main([seed0, seed1, "--out", str(tmp_path / "out")])
    s = json.loads((tmp_path / "out/summary.json").read_text())
    assert [src["machine"] for src in s["sources"]] == [machine, None]
    text = (tmp_path / "out/summary.md").read_text()
    assert f"| `{seed0}` | 0 | SOP, DINO, iBOT | Xeon Test, 2 of 4 cores, avx512f, amx_tile |" in text
    assert "not recorded" in text
