"""Importing sop_plugin.solo registers SOP in solo-learn, once, or explains how to install it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")


def test_import_registers_sop_and_ibot():
    from solo.methods import METHODS

    import sop_plugin.solo
    from sop_plugin.solo.ibot_method import IBOT
    from sop_plugin.solo.sop_method import SOP

    assert METHODS["sop"] is SOP and METHODS["ibot"] is IBOT
    assert sop_plugin.solo.SOP is SOP
    assert "dino" in METHODS  # solo-learn's own methods stay


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


def test_missing_solo_learn_gives_install_hint():
    code = (
        "import sys; sys.modules['solo'] = None\n"
        "try:\n"
        "    import sop_plugin.solo\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "solo-learn" in result.stdout
    assert "git repository" in result.stdout
