"""The schema of ``results.json``, checked before it is written and whenever it is read.

Schema (accuracies and retrieval scores in percent)::

    {"dataset": str, "seed": int, "profile": str,
     "raw_pixel_knn_top1": float | None,
     "methods": {"<name>": {"knn_top1", "linear_top1", "map_at_r", "recall_at_1",
                            "corrupt_knn_top1", "train_seconds",
                            "step_seconds_median", "peak_rss_mb": float,
                            "epochs": int}}}

Extra keys are allowed and ignored, so the runner may store more (curves, the step-time tail
``step_seconds_p90`` / ``step_seconds_max`` and ``step_seconds_sum``, ...).

Optional ``status`` (``{"<name>": "done" | "not started" | "interrupted at step N"}``, every
method of the run): the methods ``done`` are exactly those in ``methods``, which may then be
empty (a run stopped by a signal before any method was done; see ``interrupted``).

Optional, from the evaluation suite (``eval.suite``, docs/evaluation.md), checked when present:
per method ``finetune_top1``, ``seg_miou``, ``seg_pixel_acc`` (numbers) and ``fewshot_top1``
(``{"1pct": number, "10pct": number}``); top-level ``controls`` (``{"random_init": {the same
keys}, "raw_pixels": {"seg_miou", "seg_pixel_acc"}}``) and ``embedding_map``
(``{"file", "backend", "points", "panels"}``).

Optional per method, checked when present: ``collapse`` (the collapse diagnostics,
docs/evaluation.md): ``{"probe_images": int, "knn_k": int, "final": {stat: number | None},
"history": [{"epoch": number, stat: number | None, ...}, ...]}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

METRICS: tuple[str, ...] = (
    "knn_top1",
    "linear_top1",
    "map_at_r",
    "recall_at_1",
    "corrupt_knn_top1",
    "train_seconds",
    "step_seconds_median",
    "peak_rss_mb",
    "epochs",
)
"""Per-method keys, in table column order."""


def is_number(value: Any) -> bool:
    """int or float, but not bool (a bool is an int to Python, never a metric here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: ``results["status"][method]``: ``done`` (its metrics are in ``methods``), ``not started`` or
#: ``interrupted at step N`` (a signal stopped the run: sop_plugin/bench/train/interruption.py)
DONE = "done"
_STATUS = re.compile(r"done|not started|interrupted at step \d+")


SUITE_SCALARS: tuple[str, ...] = ("finetune_top1", "seg_miou", "seg_pixel_acc")
"""Optional per-method (and per-control) numbers of the evaluation suite."""


def _check_status(status: Any, methods: Any) -> Mapping[str, str] | None:
    """The optional per-method ``status``: methods ``done`` exactly when their metrics are listed."""
    if status is None:
        return None
    if not isinstance(status, Mapping) or not all(
        isinstance(v, str) and _STATUS.fullmatch(v) for v in status.values()
    ):
        raise ValueError(
            "results['status'] must map methods to 'done', 'not started' or 'interrupted at step N', "
            f"got {status!r}"
        )
    listed = set(methods) if isinstance(methods, Mapping) else set()
    done = {m for m, v in status.items() if v == DONE}
    if done != listed:
        raise ValueError(
            f"results: methods with status 'done' {sorted(done)} differ from those listed {sorted(listed)}"
        )
    return status


def validate_results(d: Any) -> None:
    """Raise ``ValueError`` naming the first missing or ill-typed key of a results dict."""
    if not isinstance(d, Mapping):
        raise ValueError(f"results must be a dict, got {type(d).__name__}")
    top_types: dict[str, tuple[type, ...]] = {"dataset": (str,), "seed": (int,), "profile": (str,)}
    for key, types in top_types.items():
        if key not in d:
            raise ValueError(f"results: missing key {key!r}")
        if not isinstance(d[key], types) or isinstance(d[key], bool):
            raise ValueError(f"results[{key!r}] must be {types[0].__name__}, got {d[key]!r}")
    if "raw_pixel_knn_top1" not in d:
        raise ValueError("results: missing key 'raw_pixel_knn_top1'")
    floor = d["raw_pixel_knn_top1"]
    if floor is not None and not is_number(floor):
        raise ValueError(f"results['raw_pixel_knn_top1'] must be a number or None, got {floor!r}")
    methods = d.get("methods")
    status = _check_status(d.get("status"), methods)
    if not isinstance(methods, Mapping) or not (methods or (status and DONE not in status.values())):
        raise ValueError("results: 'methods' must be a non-empty dict of method -> metrics")
    for name, metrics in methods.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"results['methods'][{name!r}] must be a dict")
        for key in METRICS:
            if key not in metrics:
                raise ValueError(f"results['methods'][{name!r}]: missing key {key!r}")
            value = metrics[key]
            ok = isinstance(value, int) and not isinstance(value, bool)
            if key != "epochs":
                ok = is_number(value)
            if not ok:
                kind = "int" if key == "epochs" else "number"
                raise ValueError(f"results['methods'][{name!r}][{key!r}] must be {kind}, got {value!r}")
        _check_suite(f"results['methods'][{name!r}]", metrics)
        _check_collapse(f"results['methods'][{name!r}]['collapse']", metrics.get("collapse"))
    controls = d.get("controls")
    if controls is not None:
        if not isinstance(controls, Mapping) or not all(isinstance(c, Mapping) for c in controls.values()):
            raise ValueError("results['controls'] must be a dict of control -> metrics")
        for name, metrics in controls.items():
            _check_suite(f"results['controls'][{name!r}]", metrics)


def _check_collapse(where: str, collapse: Any) -> None:
    """The optional ``collapse`` record.

    ``final`` and every ``history`` entry map statistics to numbers or None.
    """
    if collapse is None:
        return
    if not isinstance(collapse, Mapping):
        raise ValueError(f"{where} must be a dict, got {collapse!r}")
    final, history = collapse.get("final"), collapse.get("history")
    if not isinstance(final, Mapping):
        raise ValueError(f"{where}['final'] must map statistics to numbers or None, got {final!r}")
    if not isinstance(history, list) or not all(isinstance(h, Mapping) for h in history):
        raise ValueError(f"{where}['history'] must be a list of measurements, got {history!r}")
    for i, entry in enumerate([final, *history]):
        place = f"{where}['final']" if i == 0 else f"{where}['history'][{i - 1}]"
        if i and not is_number(entry.get("epoch")):
            raise ValueError(f"{place}['epoch'] must be a number, got {entry.get('epoch')!r}")
        for key, value in entry.items():
            if value is not None and not is_number(value):
                raise ValueError(f"{place}[{key!r}] must be a number or None, got {value!r}")


def _check_suite(where: str, metrics: Mapping[str, Any]) -> None:
    for key in SUITE_SCALARS:
        if key in metrics and not is_number(metrics[key]):
            raise ValueError(f"{where}[{key!r}] must be a number, got {metrics[key]!r}")
    few = metrics.get("fewshot_top1")
    if few is not None and (not isinstance(few, Mapping) or not all(is_number(v) for v in few.values())):
        raise ValueError(f"{where}['fewshot_top1'] must map subset names to numbers, got {few!r}")
