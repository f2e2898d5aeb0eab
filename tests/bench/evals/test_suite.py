"""The evaluation suite end to end: config defaults, the random-init control, sop-bench and sop-bench-eval.

The tiny bench run here trains 3 steps of two methods (about 3 s): not marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sop_plugin.bench.evals.embedding_map import MapSettings
from sop_plugin.bench.evals.fewshot import FewshotSettings
from sop_plugin.bench.evals.finetune import FinetuneSettings
from sop_plugin.bench.evals.rerun import main as eval_main
from sop_plugin.bench.evals.rerun import parse_overrides, reevaluate
from sop_plugin.bench.evals.seg_data import SegSettings
from sop_plugin.bench.evals.suite import SUITE, random_init_module
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.runner import run
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.module import BenchModule
from tests.tinydata import bench_config, compose_config


def test_config_defaults_are_the_settings_defaults(tmp_path: Path, tiny_data: Path) -> None:
    e = compose_config([], tmp_path, tiny_data)["eval"]
    assert tuple(e["suite"]) == SUITE and e["controls"] is True
    assert FewshotSettings.from_mapping(e["fewshot"]) == FewshotSettings()
    assert FinetuneSettings.from_mapping(e["finetune"]) == FinetuneSettings()
    assert SegSettings.from_mapping(e["seg"]) == SegSettings()
    assert MapSettings.from_mapping(e["embedding_map"]) == MapSettings()
    std = compose_config(["profile=standard"], tmp_path, tiny_data)["eval"]
    assert (
        std["finetune"]["train_images"] is None and std["seg"]["train_canvases"] > e["seg"]["train_canvases"]
    )


def test_random_init_is_the_backbone_every_method_starts_from(tmp_path: Path, tiny_data: Path) -> None:
    import lightning as L

    cfg = bench_config(tmp_path, tiny_data)
    train, _ = load_data(bench_settings(cfg))
    control = random_init_module(bench_settings(cfg), train).teacher.state_dict()
    for method in ("sop", "ibot"):
        L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)  # what fit_method does first
        start = BenchModule(
            bench_settings(cfg).module(method, 10), train.images.shape[1], train.mean, train.std
        ).teacher.state_dict()
        assert all(torch.equal(control[k], start[k]) for k in control)


def test_parse_overrides() -> None:
    evals, controls, rest = parse_overrides(["evals=[seg,fewshot]", "controls=false", "eval.seg.epochs=3"])
    assert evals == ("fewshot", "seg") and controls is False and rest == {"eval": {"seg": {"epochs": 3}}}
    assert parse_overrides([]) == (None, None, {})
    with pytest.raises(ValueError, match="unknown evaluation"):
        parse_overrides(["evals=knn"])


def test_eval_cli_refuses_an_unfinished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(tmp_path)])
    assert exit_info.value.code == 2 and "results.json" in capsys.readouterr().err


def test_bench_run_has_the_suite_and_sop_bench_eval_reproduces_it(tmp_path: Path, tiny_data: Path) -> None:
    out = tmp_path / "run"
    results = run(bench_config(out, tiny_data, ["methods=[sop,dino]"]))
    assert results is not None
    validate_results(results)
    for name, r in [*results["methods"].items(), ("random_init", results["controls"]["random_init"])]:
        assert 0.0 <= r["finetune_top1"] <= 100.0, name
        assert set(r["fewshot_top1"]) == {"1pct", "10pct"}, name
        assert 0.0 <= r["seg_miou"] <= 100.0 and 0.0 <= r["seg_pixel_acc"] <= 100.0, name
    raw = results["controls"]["raw_pixels"]
    assert 0.0 <= raw["seg_miou"] <= 100.0 and "finetune_top1" not in raw
    assert results["embedding_map"]["panels"] == ["sop", "dino", "random_init"]
    for png in ("embedding_map.png", "suite.png"):
        assert (out / png).stat().st_size > 1000
    assert len(list((out / "cache").glob("seg-canvases-*.npz"))) == 1
    report = (out / "report.md").read_text()
    assert "## Evaluation suite" in report and "| random init (control) |" in report and "seg mIoU" in report

    # the same evaluations on the saved checkpoints: the same numbers, no training
    again = reevaluate(out, evals=("fewshot", "finetune", "seg"))
    for name in ("sop", "dino"):
        for key in ("finetune_top1", "fewshot_top1", "seg_miou", "seg_pixel_acc"):
            assert again["methods"][name][key] == results["methods"][name][key], (name, key)
    assert again["controls"]["random_init"]["seg_miou"] == results["controls"]["random_init"]["seg_miou"]
    # an override changes only what it touches and lands in results.json
    changed = reevaluate(out, evals=("seg",), controls=False, overrides={"eval": {"seg": {"epochs": 3}}})
    assert changed["methods"]["sop"]["finetune_top1"] == results["methods"]["sop"]["finetune_top1"]
    assert changed["methods"]["sop"]["seg_miou"] != results["methods"]["sop"]["seg_miou"]
    assert (
        json.loads((out / "results.json").read_text())["methods"]["sop"]["seg_miou"]
        == changed["methods"]["sop"]["seg_miou"]
    )
