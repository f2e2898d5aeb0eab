"""The console scripts: each applies the thread policy, then imports and runs its tool.

A tool's own module imports torch at its top, too late for ``OMP_WAIT_POLICY``
(:mod:`sop_plugin.threads`); these functions import nothing heavy before
:func:`~sop_plugin.threads.prefer_passive_wait`, so that importing a tool's module has no
side effect and running it from the shell still gets the policy.
"""

from __future__ import annotations

import importlib

from sop_plugin.threads import prefer_passive_wait


def _run(module: str, function: str = "main") -> None:
    """Apply the thread policy, then call ``module.function()``."""
    prefer_passive_wait()
    getattr(importlib.import_module(module), function)()


def sop_bench() -> None:
    """``sop-bench``: train and evaluate SOP, DINO and iBOT on one pipeline."""
    _run("sop_plugin.bench.cli")


def sop_bench_eval() -> None:
    """``sop-bench-eval``: the evaluation suite on a finished run's checkpoints."""
    _run("sop_plugin.bench.evals.rerun")


def sop_perf() -> None:
    """``sop-perf``: retrieval and step-cost benchmarks."""
    _run("sop_plugin.perf.cli")


def sop_data() -> None:
    """``sop-data``: export and check datasets."""
    _run("sop_plugin.data.cli")


def sop_solo_pretrain() -> None:
    """``sop-solo-pretrain``: solo-learn's pretraining with SOP and iBOT registered."""
    _run("sop_plugin.solo.launch", "pretrain_main")


def sop_solo_linear() -> None:
    """``sop-solo-linear``: solo-learn's linear probe with SOP and iBOT registered."""
    _run("sop_plugin.solo.launch", "linear_main")


def sop_solo_compare() -> None:
    """``sop-solo-compare``: the solo-learn comparison table from finished runs."""
    _run("sop_plugin.solo.compare")
