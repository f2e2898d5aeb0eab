"""The console scripts set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless the environment names one.

Each check runs a fresh interpreter (the policy only matters before ``import torch``, which a test
process has long done) and reads back one JSON line the probe prints. The console scripts are the
functions of :mod:`sop_plugin.launchers`, called here as the installed ``sop-perf`` calls them, with
an argument ``sop-perf`` refuses: it exits with status 2 right after parsing, by when its module, and
torch with it, is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

#: runs ``sop-perf not-a-setting`` through its launcher; prints the policy and what was loaded when
RUN_SOP_PERF = """
import json, os, sys
sys.argv = ["sop-perf", "not-a-setting"]
from sop_plugin.launchers import sop_perf
torch_before = "torch" in sys.modules
try:
    sop_perf()
except SystemExit as err:
    code = err.code
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "torch_before": torch_before,
                  "torch_after": "torch" in sys.modules, "exit": code}))
"""

#: ``prefer_passive_wait`` once torch is loaded
TOO_LATE = """
import json, os, torch
from sop_plugin.threads import prefer_passive_wait
print(json.dumps({"set": prefer_passive_wait(), "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""

#: ``prefer_passive_wait`` twice, with torch not loaded
IN_TIME = """
import json, os, sys
from sop_plugin.threads import prefer_passive_wait
first = prefer_passive_wait()
print(json.dumps({"first": first, "second": prefer_passive_wait(),
                  "policy": os.environ.get("OMP_WAIT_POLICY"), "torch": "torch" in sys.modules}))
"""

#: the environment before and after importing the tool modules: the names whose value changed
IMPORTS_ONLY = """
import json, os
before = dict(os.environ)
import sop_plugin.threads, sop_plugin.launchers, sop_plugin.perf.cli
after = dict(os.environ)
print(json.dumps(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))))
"""


def _probe(code: str, env_policy: str | None = None) -> Any:
    """Run ``code`` in a fresh Python with ``OMP_WAIT_POLICY`` unset, or set to ``env_policy``.

    Returns the JSON value of the last line the probe printed.
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # imports torch
def test_console_script_sets_passive_before_torch() -> None:
    got = _probe(RUN_SOP_PERF)
    assert got == {"policy": "PASSIVE", "torch_before": False, "torch_after": True, "exit": 2}


@pytest.mark.slow  # imports torch
def test_the_environment_wins() -> None:
    got = _probe(RUN_SOP_PERF, env_policy="ACTIVE")
    assert got == {"policy": "ACTIVE", "torch_before": False, "torch_after": True, "exit": 2}


@pytest.mark.slow  # imports torch
def test_too_late_once_torch_is_loaded() -> None:
    assert _probe(TOO_LATE) == {"set": False, "policy": None}  # nothing pretends to take effect


def test_sets_passive_once_before_torch() -> None:
    got = _probe(IN_TIME)
    assert got == {"first": True, "second": False, "policy": "PASSIVE", "torch": False}


@pytest.mark.slow  # imports torch
def test_importing_the_tools_changes_no_environment_variable() -> None:
    assert _probe(IMPORTS_ONLY) == []
