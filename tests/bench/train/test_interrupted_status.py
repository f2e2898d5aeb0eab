"""``results.json`` of an interrupted run.

The per-method ``status``, what ``resume=`` keeps, the resume command.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.train.interruption import kept_results
from sop_plugin.runtime.resume_message import RESUME_RUN_DIR, resume_command

METRICS = dict.fromkeys(
    ("knn_top1", "linear_top1", "map_at_r", "recall_at_1", "corrupt_knn_top1", "train_seconds"), 1.0
)
METRICS.update(step_seconds_median=0.1, peak_rss_mb=100.0, epochs=1)


def _results(methods: dict, status: dict | None) -> dict:
    out = {"dataset": "d", "seed": 0, "profile": "quick", "raw_pixel_knn_top1": None, "methods": methods}
    if status is not None:
        out["status"] = status
    return out


def test_status_of_an_interrupted_run_is_valid() -> None:
    validate_results(_results({}, {"sop": "interrupted at step 5", "dino": "not started"}))
    validate_results(_results({"sop": METRICS}, {"sop": "done", "dino": "interrupted at step 12"}))
    validate_results(_results({"sop": METRICS}, None))  # results written before statuses existed


@pytest.mark.parametrize(
    ("methods", "status", "match"),
    [
        ({}, None, "non-empty"),
        ({}, {"sop": "done"}, "differ"),
        ({"sop": METRICS}, {"sop": "interrupted at step 3"}, "differ"),
        ({}, {"sop": "stopped"}, "'done', 'not started' or 'interrupted at step N'"),
        ({}, {"sop": "done", "dino": "not started"}, "differ"),
    ],
)
def test_inconsistent_status_is_refused(methods: dict, status: dict | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_results(_results(methods, status))


def _run_dir(tmp_path: Path, cfg: dict, results: dict) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_resume_keeps_done_methods_only_under_the_same_settings(tmp_path: Path) -> None:
    cfg = {"methods": ["sop", "dino"], "seed": 0, "train": {"epochs": 1, "num_workers": 0}, "out": "a"}
    run_dir = _run_dir(
        tmp_path, cfg, _results({"sop": METRICS}, {"sop": "done", "dino": "interrupted at step 4"})
    )
    same = {
        **cfg,
        "resume": str(run_dir),
        "out": "b",
        "train": {"epochs": 1, "num_workers": 2},
    }  # harmless changes
    assert kept_results(same) == {"sop": METRICS}
    assert kept_results({**same, "train": {"epochs": 2, "num_workers": 0}}) == {}  # more epochs: train again
    assert kept_results({**same, "methods": ["dino"]}) == {}
    assert kept_results({**cfg, "resume": None}) == {}


def test_resume_command_repeats_the_overrides_and_sets_resume(tmp_path: Path) -> None:
    argv = ["/x/sop-bench", "methods=[sop,dino]", "resume=/old", "train.max_steps=5"]
    command = resume_command("sop-bench", argv, RESUME_RUN_DIR, tmp_path / "run")
    assert shlex.split(command) == [
        "sop-bench",
        "methods=[sop,dino]",
        "train.max_steps=5",
        f"resume={tmp_path}/run",
    ]
    quoted = resume_command("sop-bench", ["sop-bench"], RESUME_RUN_DIR, Path("/r/a=b"))
    assert shlex.split(quoted)[-1] == "resume='/r/a=b'"  # hydra needs quotes
