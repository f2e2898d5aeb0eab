"""The command-line tools set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless the environment names a policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: subprocesses that import torch: left out of `make test-fast`
pytestmark = pytest.mark.slow

PROBE = "import {module}, os, sys; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


def _policy(module: str, env_policy: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.parametrize("module", ["sop_plugin.bench.cli", "sop_plugin.perf.cli"])
def test_entry_points_default_to_passive(module: str) -> None:
    assert _policy(module, None) == ["PASSIVE", "True"]  # set, and torch was loaded after it


def test_the_environment_wins() -> None:
    assert _policy("sop_plugin.bench.cli", "ACTIVE") == ["ACTIVE", "True"]


def test_too_late_once_torch_is_loaded() -> None:
    assert _policy("torch, sop_plugin.threads", None) == ["None", "True"]  # nothing pretends to take effect
