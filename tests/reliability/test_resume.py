"""Resume: N steps, crash, resume, M more steps == N+M steps straight (losses, weights, memories)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sop_plugin.bench.checks import check_resume
from sop_plugin.bench.inputs import load_data
from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.fit import fit_method
from sop_plugin.runtime import CheckpointError, load_checkpoint
from tests.reliability.relutil import (
    Crash,
    CrashAtStep,
    LossRecorder,
    assert_states_close,
    state_of,
    tiny_config,
)

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow

MEMORY_KEYS = (
    "objective.objective.class_memory.bank",
    "objective.objective.class_memory.ptr",
    "objective.objective.patch_memory.bank",
    "objective.objective.patch_memory.ptr",
    "objective.class_ids",
)


@pytest.mark.parametrize(
    ("crash_at", "ckpt_step", "workers"),
    [(9, 8, 0), (7, 6, 0), (9, 8, 2)],
    ids=["mid-epoch", "epoch-end", "mid-epoch-2-workers"],
)
def test_resume_matches_straight_run(
    crash_at: int,
    ckpt_step: int,
    workers: int,
    straight: tuple[dict[int, float], dict, Path],
    tiny_data: Path,
    tmp_path: Path,
) -> None:
    losses, final, _ = straight
    cfg = tiny_config(tmp_path, tiny_data, [f"train.num_workers={workers}"])
    train, test = load_data(bench_settings(cfg))
    with pytest.raises(Crash):
        fit_method("sop", bench_settings(cfg), train, test, tmp_path, callbacks=[CrashAtStep(crash_at)])
    last = tmp_path / "sop" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == ckpt_step
    # both memories, their pointers and the memory-row image ids travel in the checkpoint
    for key in MEMORY_KEYS:
        assert key in ckpt["state_dict"], key
    assert int(ckpt["state_dict"]["objective.objective.class_memory.ptr"]) == ckpt_step * 16 % 100
    assert int(ckpt["state_dict"]["objective.objective.patch_memory.ptr"]) == ckpt_step * 16 % 100
    assert not list(last.parent.glob("*.tmp"))

    rec = LossRecorder()
    fitted = fit_method("sop", bench_settings(cfg), train, test, tmp_path, ckpt_path=last, callbacks=[rec])
    assert fitted.trainer.global_step == 12
    assert sorted(rec.losses) == list(range(ckpt_step, 12))  # nothing skipped, nothing repeated
    for step, loss in rec.losses.items():
        assert loss == pytest.approx(losses[step], abs=1e-6), step
    assert_states_close(state_of(fitted.module), final, atol=1e-6)
    # the interrupted run's log rows survive the resume (Lightning alone would drop or break them)
    with open(tmp_path / "sop" / "metrics.csv", newline="") as f:
        logged = {int(row["step"]) for row in csv.DictReader(f)}
    assert min(logged) < ckpt_step <= max(logged), sorted(logged)


def test_resume_refuses_truncated_checkpoint(
    straight: tuple[dict[int, float], dict, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """A checkpoint cut short (e.g. copied while written) is refused before any training, by resume=DIR."""
    data = (straight[2] / "sop" / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "sop" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(data[: len(data) * 2 // 3])
    cfg = tiny_config(tmp_path / "out", tiny_data, [f"resume={tmp_path}"])
    with pytest.raises(CheckpointError, match="truncated"):
        check_resume(cfg)


def test_resume_continues_a_finished_run_without_training(
    straight: tuple[dict[int, float], dict, Path], tiny_data: Path
) -> None:
    """resume=<finished run dir>: nothing left to train, the state is the final one."""
    losses, final, out = straight
    cfg = tiny_config(out, tiny_data, [f"resume={out}"])
    paths = check_resume(cfg)
    assert paths == {"sop": out / "sop" / "checkpoints" / "last.ckpt"}
    train, test = load_data(bench_settings(cfg))
    rec = LossRecorder()
    fitted = fit_method("sop", bench_settings(cfg), train, test, out, ckpt_path=paths["sop"], callbacks=[rec])
    assert rec.losses == {} and fitted.trainer.global_step == 12
    assert_states_close(state_of(fitted.module), final, atol=0.0)
