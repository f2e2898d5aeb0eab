"""Importing sop_plugin changes nothing: no environment variable, no warning filter.

Thread settings belong to the console scripts (``sop_plugin.launchers``) and warning filters to
the code that needs them (scoped with ``warnings.catch_warnings``). torch, Lightning and other
libraries change both when they load, so the check first imports, in a fresh interpreter, every
third-party module that importing sop_plugin loads, and only then takes the snapshot.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: subprocesses that import torch and Lightning: left out of `make test-fast`
pytestmark = pytest.mark.slow

IMPORT_ALL = """
import importlib, pkgutil, sop_plugin

def import_all():
    names = [m.name for m in pkgutil.walk_packages(sop_plugin.__path__, "sop_plugin.")]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:  # a module of the solo-learn binding where solo-learn is missing
            if "solo" not in str(err):
                raise
    return names
"""

LIST_THIRD_PARTY = (
    IMPORT_ALL
    + """
import json, sys
import_all()
print(json.dumps([n for n in sys.modules if not n.startswith("sop_plugin")]))
"""
)

COMPARE = (
    IMPORT_ALL
    + """
import importlib, json, os, sys, warnings
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # private or platform-specific submodules that only load through their parent
env, filters = dict(os.environ), list(warnings.filters)
import sop_plugin.bench, sop_plugin.core
names = import_all()
print(json.dumps({
    "modules": len(names),
    "env_added_or_changed": {k: v for k, v in os.environ.items() if env.get(k) != v},
    "env_removed": sorted(set(env) - set(os.environ)),
    "filters_added": [repr(f) for f in warnings.filters if f not in filters],
    "filters_removed": [repr(f) for f in filters if f not in warnings.filters],
}))
"""
)


def _python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_importing_every_module_leaves_environment_and_warning_filters_unchanged() -> None:
    third_party = _python(LIST_THIRD_PARTY)
    report = json.loads(_python(COMPARE, third_party))
    assert report["modules"] > 100  # the walk reached the whole package
    assert report["env_added_or_changed"] == {}
    assert report["env_removed"] == []
    assert report["filters_added"] == []
    assert report["filters_removed"] == []
