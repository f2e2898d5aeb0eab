"""solo-learn binding of SOP: with solo-learn importable, importing this package registers
``METHODS["sop"]``, ``METHODS["ibot"]`` and the ``vit_custom`` backbone.

solo-learn is an optional extra of sop-plugin. Its version 1.0.6 is not on PyPI; install it from its
git repository first (see the README, "With solo-learn"). Without it this package still imports, so
that its solo-free tools (``sop-solo-compare``, :mod:`sop_plugin.solo.compare`) work; asking it for
``SOP``, ``IBOT``, ``register`` and the other names that need solo-learn raises an ``ImportError``
saying how to install solo-learn.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: the names below that need solo-learn
__all__ = ["IBOT", "METHOD_KWARGS_DEFAULTS", "PLUGIN_METHODS", "SHARED_KEYS", "SOP", "register"]

try:
    from solo.methods import METHODS
except ImportError as exc:  # solo-learn missing, or installed but not importable
    #: why solo-learn could not be imported (None: it could)
    SOLO_IMPORT_ERROR: ImportError | None = exc
else:
    SOLO_IMPORT_ERROR = None


def solo_missing_error() -> ImportError:
    """The error for a use of solo-learn where it is not importable: what failed and how to install it."""
    exc = SOLO_IMPORT_ERROR
    return ImportError(
        "sop_plugin.solo needs solo-learn 1.0.6, which is not importable here "
        f"({type(exc).__name__}: {exc}). PyPI only has the unusable 1.0.2: install solo-learn "
        "from its git repository, e.g. `pip install 'setuptools>=77.0.3,<81'` then "
        "`pip install --no-build-isolation ./solo-learn` from a clone of its git "
        "repository vturrisi/solo-learn (lightning 2.1.2 needs setuptools' pkg_resources); "
        "see the README section 'With solo-learn'."
    )


def require_solo() -> None:
    """Raise :func:`solo_missing_error` unless solo-learn is importable."""
    if SOLO_IMPORT_ERROR is not None:
        raise solo_missing_error() from SOLO_IMPORT_ERROR


if SOLO_IMPORT_ERROR is None:
    from sop_plugin.solo.backbones import register_backbones
    from sop_plugin.solo.ibot_method import IBOT
    from sop_plugin.solo.settings import SHARED_KEYS
    from sop_plugin.solo.sop_method import METHOD_KWARGS_DEFAULTS, SOP

    #: the methods this package adds to solo-learn's ``METHODS``
    PLUGIN_METHODS = {"sop": SOP, "ibot": IBOT}

    def register() -> None:
        """Register :class:`SOP`, :class:`IBOT` and the ``vit_custom`` backbone in solo-learn (idempotent).

        Another class under the name ``sop`` or ``ibot`` is replaced, with a warning.
        """
        register_backbones()
        for name, cls in PLUGIN_METHODS.items():
            current = METHODS.get(name)
            if current is cls:
                continue
            if current is not None:
                replacing = "replacing solo-learn's METHODS[%r] (%r) by sop_plugin's %s"
                log.warning(replacing, name, current, cls.__name__)
            METHODS[name] = cls

    register()


def __getattr__(name: str) -> Any:
    """The names of :data:`__all__` without solo-learn: the ``ImportError`` of :func:`require_solo`."""
    if name in __all__:
        require_solo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
