"""SIGTERM / SIGINT to a real ``sop-bench`` process: checkpoint, partial results, exit 128+N, exact resume.

Each run is ``tinydata.TINY_RUN`` with ``methods=[sop,dino]``, slowed to ~0.2 s a step by
``slow_bench.py`` (which also writes ``<method> <steps done>`` to a progress file), so that the
signal lands mid-training. The resumed run is started with the command the interrupted run
printed, and its ``results.json`` and final checkpoints are compared with an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sop_plugin.bench.results.schema import validate_results
from sop_plugin.bench.train.resume import check_checkpoint
from sop_plugin.runtime import load_checkpoint
from tests.reliability.relutil import assert_states_close, overrides, tiny_config

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
#: `retrieval=torch`: `auto` times the backends in each process and may pick the other (equally
#: exact) one after a resume, whose last-bit differences would blur the equality checked here
EXTRA = ["methods=[sop,dino]", "sop.retrieval=torch"]
#: wall-clock numbers: differ between any two runs
TIMINGS = ("train_seconds", "step_seconds_median", "step_seconds_p90", "step_seconds_max", "step_seconds_sum")
TIMINGS += ("peak_rss_mb",)


def _env(progress: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **extra}
    if progress is not None:
        env["SOP_TEST_PROGRESS"] = str(progress)
    return env


def _start(run_dir: Path, data: Path, progress: Path, extra: list[str] = (), **env: str) -> subprocess.Popen:
    args = overrides(run_dir, data, [*EXTRA, *extra])
    return subprocess.Popen(
        [sys.executable, str(HERE / "slow_bench.py"), *args],
        env=_env(progress, **env),
        cwd=run_dir.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(
    proc: subprocess.Popen, progress: Path, ready: Callable[[str], bool], timeout: float = 180.0
) -> str:
    """Poll the progress file until ``ready(text)``; returns the text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"sop-bench ended (status {proc.returncode}) before the signal:\n{proc.stderr.read()[-3000:]}"
            )
        text = progress.read_text() if progress.is_file() else ""
        if text and ready(text):
            return text
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"progress never reached the point to signal at (last: {text!r})")


def _at_step(method: str, step: int) -> Callable[[str], bool]:
    def ready(text: str) -> bool:
        name, _, value = text.partition(" ")
        return name == method and value.isdigit() and int(value) >= step

    return ready


def _finish(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    _, err = proc.communicate(timeout=timeout)
    return err


def _message(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("sop-bench: interrupted by")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _resume(message: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the resume command the interrupted run printed (``sop-bench`` = this Python's CLI module)."""
    command = shlex.split(message.split("resume with: ", 1)[1])
    assert command[0] == "sop-bench" and command[-1].startswith("resume=")
    result = subprocess.run(
        [sys.executable, "-m", "sop_plugin.bench.cli", *command[1:]],
        env=_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    validate_results(results)
    return results


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _assert_matches_uninterrupted(run_dir: Path, straight: Path) -> None:
    got, want = _results(run_dir), _results(straight)
    assert got["status"] == want["status"] == {"sop": "done", "dino": "done"}
    assert "interrupted" not in got
    for key in ("dataset", "seed", "profile", "raw_pixel_knn_top1"):
        assert got[key] == want[key], key
    for method, metrics in want["methods"].items():
        for key, value in metrics.items():
            if key not in TIMINGS:
                assert _same(got["methods"][method][key], value), (
                    method,
                    key,
                    got["methods"][method][key],
                    value,
                )
    for method in ("sop", "dino"):
        final = load_checkpoint(run_dir / method / "checkpoints" / "last.ckpt")
        assert final["global_step"] == 12
        expected = load_checkpoint(straight / method / "checkpoints" / "last.ckpt")["state_dict"]
        assert_states_close(dict(final["state_dict"]), dict(expected), atol=1e-6)


@pytest.fixture(scope="module")
def straight(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run: ``sop-bench`` with the same settings, start to end."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "sop_plugin.bench.cli", *overrides(out, tiny_data, EXTRA)],
        env=_env(),
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_sigterm_mid_training_checkpoints_the_step_then_resume_matches(
    straight: Path, tiny_data: Path, tmp_path: Path
) -> None:
    run_dir, progress = tmp_path / "run", tmp_path / "progress"
    proc = _start(run_dir, tiny_data, progress)
    seen = int(_wait(proc, progress, _at_step("sop", 5)).split()[1])
    proc.send_signal(signal.SIGTERM)
    stderr = _finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM == 143, stderr[-3000:]
    assert "Traceback" not in stderr

    ckpt = run_dir / "sop" / "checkpoints" / "last.ckpt"
    step = load_checkpoint(ckpt)["global_step"]
    assert seen <= step <= seen + 1  # the step in progress when the signal came, not the last periodic one
    check_checkpoint(ckpt, "sop", tiny_config(run_dir, tiny_data, EXTRA))  # a full, resumable checkpoint
    assert not list(ckpt.parent.glob("*.tmp"))
    results = _results(run_dir)
    assert results["status"] == {"sop": f"interrupted at step {step}", "dino": "not started"}
    assert results["methods"] == {}
    assert results["interrupted"] == {
        "signal": "SIGTERM",
        "method": "sop",
        "phase": "training",
        "step": step,
        "checkpoint": str(ckpt),
    }
    message = _message(stderr)
    assert f"at step {step} of sop" in message and str(ckpt) in message
    assert message.endswith(f"resume={run_dir}")

    _resume(message, tmp_path)
    _assert_matches_uninterrupted(run_dir, straight)


def test_sigint_in_second_method_keeps_the_first_then_resume_matches(
    straight: Path, tiny_data: Path, tmp_path: Path
) -> None:
    run_dir, progress = tmp_path / "run", tmp_path / "progress"
    proc = _start(run_dir, tiny_data, progress)
    seen = int(_wait(proc, progress, _at_step("dino", 5)).split()[1])
    proc.send_signal(signal.SIGINT)
    stderr = _finish(proc)
    assert proc.returncode == 128 + signal.SIGINT == 130, stderr[-3000:]
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr

    step = load_checkpoint(run_dir / "dino" / "checkpoints" / "last.ckpt")["global_step"]
    assert seen <= step <= seen + 1
    results = _results(run_dir)
    assert results["status"] == {"sop": "done", "dino": f"interrupted at step {step}"}
    assert list(results["methods"]) == ["sop"]
    sop_ckpt = run_dir / "sop" / "checkpoints" / "last.ckpt"
    sop_written = sop_ckpt.stat().st_mtime_ns

    resumed = _resume(_message(stderr), tmp_path)
    assert "sop is done" in resumed.stdout and "=== sop ===" not in resumed.stdout  # not retrained
    assert sop_ckpt.stat().st_mtime_ns == sop_written
    assert _results(run_dir)["methods"]["sop"] == results["methods"]["sop"]  # kept as it was
    _assert_matches_uninterrupted(run_dir, straight)


def test_sigterm_during_evaluation_then_resume_matches(
    straight: Path, tiny_data: Path, tmp_path: Path
) -> None:
    run_dir, progress = tmp_path / "run", tmp_path / "progress"
    proc = _start(run_dir, tiny_data, progress, SOP_TEST_SLOW_EVAL="5")
    _wait(proc, progress, lambda text: text == "sop evaluating")
    proc.send_signal(signal.SIGTERM)
    stderr = _finish(proc)
    assert proc.returncode == 143, stderr[-3000:]
    results = _results(run_dir)
    assert results["status"] == {
        "sop": "interrupted at step 12",
        "dino": "not started",
    }  # trained, not evaluated
    ckpt = run_dir / "sop" / "checkpoints" / "last.ckpt"
    assert results["interrupted"]["phase"] == "evaluation" and results["interrupted"]["checkpoint"] == str(
        ckpt
    )
    assert load_checkpoint(ckpt)["global_step"] == 12

    _resume(_message(stderr), tmp_path)
    _assert_matches_uninterrupted(run_dir, straight)


def test_second_signal_while_saving_leaves_a_whole_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    """SIGTERM, then SIGINT and SIGTERM again while the checkpoint is being written (a 2 s write)."""
    run_dir, progress = tmp_path / "run", tmp_path / "progress"
    saves = Path(f"{progress}.saves")
    proc = _start(run_dir, tiny_data, progress, ["methods=[sop]"], SOP_TEST_SLOW_SAVE="2")
    _wait(proc, progress, _at_step("sop", 2))  # before the first periodic checkpoint (step 4)
    proc.send_signal(signal.SIGTERM)
    _wait(proc, saves, lambda text: bool(text.strip()))  # our checkpoint's temporary file is written
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stderr = _finish(proc)
    assert proc.returncode == 143, stderr[-3000:]  # the first signal decides
    assert stderr.count("again: still writing the checkpoint") == 2, stderr[-3000:]
    ckpt = run_dir / "sop" / "checkpoints" / "last.ckpt"
    written = int(saves.read_text().split()[0])
    saved = check_checkpoint(ckpt, "sop", tiny_config(run_dir, tiny_data, [*EXTRA, "methods=[sop]"]))
    assert saved["global_step"] == written
    assert not list(ckpt.parent.glob("*.tmp"))
    assert _results(run_dir)["status"] == {"sop": f"interrupted at step {written}"}
    assert f"at step {written} of sop" in _message(stderr)


def test_out_dir_that_cannot_be_created_is_a_one_line_error(tiny_data: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sop_plugin.bench.cli", *overrides(Path("/proc/x"), tiny_data)],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("sop-bench:")]
    assert lines == [
        "sop-bench: error: out=/proc/x: cannot create the output directory (No such file or directory): set "
        "out= to a directory you can write to (default: runs/bench/<date-time> under the working directory)"
    ], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
