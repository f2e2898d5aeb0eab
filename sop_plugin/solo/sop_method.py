"""SOP as a solo-learn method: ``SOP(MaskedMomentumMethod)``.

Student = solo-learn backbone + SOP's head; teacher = their EMA (solo-learn's momentum backbone
and ``momentum_pairs``). The SOP signal (heads, memories, SOP sets, global SOP loss, SOP-MIM,
memory updates) is :class:`sop_plugin.methods.sop.SOPMethod`, the same code the benchmark trains;
without patch tokens (ResNet, ...) SOP-MIM is off with a warning and only the global SOP loss
trains the model.

Everything else (online linear classifier, online kNN, momentum classifier, optimizers,
schedulers, checkpointing) is solo-learn's. ``method_kwargs``: the
:class:`~sop_plugin.core.SOPConfig` fields under their own names (``seed: None`` = the run's
``seed``) plus the host's :data:`~sop_plugin.solo.settings.SHARED_KEYS`; see
:data:`METHOD_KWARGS_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sop_plugin.core import SOPConfig
from sop_plugin.solo.masked import MaskedMomentumMethod
from sop_plugin.solo.settings import SHARED_KEYS

#: Every ``method_kwargs`` key SOP understands, with its default.
METHOD_KWARGS_DEFAULTS: dict[str, Any] = {**dataclasses.asdict(SOPConfig()), "seed": None, **SHARED_KEYS}


class SOP(MaskedMomentumMethod):
    """Self-Organizing visual Prototypes (Silva, Pedrini and Ramirez Rivera, ICML 2025, arXiv 2505.21533)."""

    method_name = "sop"
    display_name = "SOP"
    METHOD_KWARGS_DEFAULTS = METHOD_KWARGS_DEFAULTS
    patch_objective = "SOP-MIM"
    fallback = "the global SOP loss"
