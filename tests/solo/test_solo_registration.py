"""Importing sop_plugin.solo registers SOP in solo-learn, once; without solo-learn the package still
imports, and what needs solo-learn explains how to install it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

NO_SOLO = "solo-learn 1.0.6 is not installed (optional extra, see README)"
needs_solo = pytest.mark.skipif(importlib.util.find_spec("solo") is None, reason=NO_SOLO)


@needs_solo
def test_import_registers_sop_and_ibot():
    from solo.methods import METHODS

    import sop_plugin.solo
    from sop_plugin.solo.ibot_method import IBOT
    from sop_plugin.solo.sop_method import SOP

    assert METHODS["sop"] is SOP and METHODS["ibot"] is IBOT
    assert sop_plugin.solo.SOP is SOP
    assert "dino" in METHODS  # solo-learn's own methods stay


@needs_solo
def test_registration_is_idempotent():
    import importlib

    from solo.methods import METHODS

    import sop_plugin.solo

    before = dict(METHODS)
    sop_plugin.solo.register()
    sop_plugin.solo.register()
    importlib.reload(sop_plugin.solo)
    assert set(METHODS) == set(before)
    assert METHODS["sop"].__name__ == "SOP" and METHODS["ibot"].__name__ == "IBOT"


#: run with solo-learn hidden: each line prints the ImportError of one use of it, or fails
WITHOUT_SOLO = """
import sys
sys.modules["solo"] = None
import sop_plugin.solo
import sop_plugin.solo.compare
for use in ("sop_plugin.solo.SOP", "sop_plugin.solo.register", "import sop_plugin.solo.launch"):
    try:
        exec(use if use.startswith("import") else f"print({use})")
    except ImportError as exc:
        print(use, "->", exc)
    else:
        raise SystemExit(f"{use}: no ImportError")
try:
    sop_plugin.solo.nothing_here
except AttributeError:
    print("other names: AttributeError")
"""


def test_missing_solo_learn_gives_install_hint():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SOLO], capture_output=True, text=True, timeout=300, check=True
    )
    assert "solo-learn" in result.stdout
    assert "git repository" in result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all("git repository" in line for line in lines[:3]), result.stdout
    assert lines[3] == "other names: AttributeError"
