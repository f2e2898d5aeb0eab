"""Comparisons for the summary: method against method, method against control, timing within a run.

Why: a mean ± std per method does not say whether one method is ahead of another; the paired
per-seed difference with its interval does (:mod:`sop_plugin.bench.results.stats`). Timings differ between
machines more than between methods, so they are compared only as ratios inside one run directory
(one machine, one after the other), never averaged over runs.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from sop_plugin.bench.results.aggregate import (
    CONTROL_KEYS,
    QUALITY,
    TIMING,
    control_series,
    lookup,
    method_series,
)
from sop_plugin.bench.results.stats import flip, paired


def pair_key(a: str, b: str) -> str:
    """The name of the pair ``a`` minus ``b`` in ``comparisons``."""
    return f"{a}-{b}"


def method_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """Every pair once, in the order of ``methods`` (the method of interest first)."""
    return list(combinations(methods, 2))


def compare_methods(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``{metric: {"a-b": paired(a, b)}}`` for every quality metric and pair with a shared seed."""
    out: dict[str, dict[str, Any]] = {}
    for key in QUALITY:
        for a, b in method_pairs(methods):
            result = paired(method_series(runs, a, key), method_series(runs, b, key))
            if result is not None:
                out.setdefault(key, {})[pair_key(a, b)] = result
    return out


def verdict_against(
    comparisons: dict[str, dict[str, Any]], metric: str, method: str, other: str
) -> str | None:
    """The verdict of ``method`` against ``other`` on ``metric`` (either orientation).

    ``None`` if not compared.
    """
    pairs = comparisons.get(metric, {})
    if pair_key(method, other) in pairs:
        return pairs[pair_key(method, other)]["verdict"]
    if pair_key(other, method) in pairs:
        return flip(pairs[pair_key(other, method)]["verdict"])
    return None


def ahead_of_all(
    comparisons: dict[str, dict[str, Any]], metric: str, method: str, methods: list[str]
) -> bool:
    """True when ``method`` is ``ahead`` of every other method on ``metric`` (the rule for a bold number)."""
    others = [m for m in methods if m != method]
    if not others:
        return False
    return all(verdict_against(comparisons, metric, method, o) == "ahead" for o in others)


def control_gaps(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {control: {metric: paired(method, control)}}}``: does a method pass each control?"""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in methods:
        for control, keys in CONTROL_KEYS.items():
            for key in keys:
                series, _ = control_series(runs, control, key)
                result = paired(method_series(runs, m, key), series)
                if result is not None:
                    out.setdefault(m, {}).setdefault(control, {})[key] = result
    return out


def timing_ratios(
    runs: list[dict[str, Any]], methods: list[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{"a/b": {timing key: [{"run", "seed", "ratio"}]}}``, only for runs that hold both ``a`` and ``b``.

    A method taken from another run directory for a seed (``RUN_DIR:METHOD``) gives no ratio for that
    seed: its time was measured on another machine or at another load. A run marked ``untimed`` (it
    shared the cores with other work) gives none either.
    """
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for a, b in method_pairs(methods):
        for key in TIMING:
            rows = []
            for r in runs:
                if r.get("untimed"):
                    continue
                ta = lookup(r["methods"].get(a), key)
                tb = lookup(r["methods"].get(b), key)
                if ta is not None and tb:
                    rows.append({"run": r["source"], "seed": r["seed"], "ratio": ta / tb})
            if rows:
                out.setdefault(f"{a}/{b}", {})[key] = rows
    return out
