"""solo-learn binding of SOP: importing this package registers ``METHODS["sop"]``, ``METHODS["ibot"]`` and the
``vit_custom`` backbone.

solo-learn is an optional extra of sop-plugin (only this package imports it). Its
version 1.0.6 is not on PyPI; install it from its git repository first (see the
README, "With solo-learn").
"""

from __future__ import annotations

import sop_plugin.threads  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE for the launchers: before solo loads torch)

# isort: split
import logging

try:
    import solo  # noqa: F401
    from solo.methods import METHODS
except ImportError as exc:  # solo-learn missing, or installed but not importable
    raise ImportError(
        "sop_plugin.solo needs solo-learn 1.0.6, which is not importable here "
        f"({type(exc).__name__}: {exc}). PyPI only has the unusable 1.0.2: install solo-learn "
        "from its git repository, e.g. `pip install 'setuptools>=77.0.3,<81'` then "
        "`pip install --no-build-isolation ./solo-learn` from a clone of its git "
        "repository vturrisi/solo-learn (lightning 2.1.2 needs setuptools' pkg_resources); "
        "see the README section 'With solo-learn'."
    ) from exc

from sop_plugin.solo.backbones import register_backbones
from sop_plugin.solo.ibot_method import IBOT
from sop_plugin.solo.settings import SHARED_KEYS
from sop_plugin.solo.sop_method import METHOD_KWARGS_DEFAULTS, SOP

log = logging.getLogger(__name__)

#: the methods this package adds to solo-learn's ``METHODS``
PLUGIN_METHODS = {"sop": SOP, "ibot": IBOT}


def register() -> None:
    """Register :class:`SOP` and :class:`IBOT` in ``solo.methods.METHODS`` and the ``vit_custom`` backbone (idempotent)."""
    register_backbones()
    for name, cls in PLUGIN_METHODS.items():
        current = METHODS.get(name)
        if current is cls:
            continue
        if current is not None:
            log.warning("replacing solo-learn's METHODS[%r] (%r) by sop_plugin's %s", name, current, cls.__name__)
        METHODS[name] = cls


register()

__all__ = ["IBOT", "METHOD_KWARGS_DEFAULTS", "PLUGIN_METHODS", "SHARED_KEYS", "SOP", "register"]
