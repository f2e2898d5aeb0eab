"""The must-show targets of the performance issue, checked on a perf.json dict.

Each target is a measured value with an upper limit (:data:`LIMITS`); ``sop-perf`` records the
verdicts under ``targets`` in perf.json and prints them (``ok`` / ``MISS``).
"""

from __future__ import annotations

from typing import Any

#: target -> upper limit: SOP's step time over iBOT's and DINO's, retrieval's share of SOP's step
#: (224 px settings), ``auto``'s pick over the fastest backend it measured, and the whole CPU run's
#: wall seconds
LIMITS = {
    "ratio_sop_over_ibot": 1.0,
    "ratio_sop_over_dino": 1.1,
    "retrieval_fraction": 0.05,
    "auto_ratio": 1.2,
    "cpu_wall_s": 600.0,
}


def check_targets(perf: dict[str, Any]) -> dict[str, Any]:
    """The targets of ``perf`` (perf.json's dict): ``{name: {"value", "limit", "met"}}``.

    A target whose value is missing (a part not run, a method left out) is left out. Step settings
    whose record says ``target_setting: false`` (reference and diagnostic ones, such as ``quick_28``)
    are reported in ``step`` but not checked here.
    """
    out: dict[str, Any] = {}

    def put(name: str, value: float | None, limit: float) -> None:
        if value is not None:
            out[name] = {"value": value, "limit": limit, "met": bool(value <= limit)}

    for s, rec in perf.get("step", {}).items():
        if not rec.get("target_setting", True):
            continue
        for other in ("ibot", "dino"):
            key = f"ratio_sop_over_{other}"
            put(f"{s}.{key}", rec.get(key), LIMITS[key])
        if "ibot" in rec:
            put(f"{s}.peak_mb_sop_over_ibot", rec["sop"]["peak_mb"] / rec["ibot"]["peak_mb"], 1.0)
        if "_224" in s:
            put(f"{s}.retrieval_fraction", rec.get("retrieval_fraction"), LIMITS["retrieval_fraction"])
    for mem, chk in perf.get("auto_check", {}).items():
        put(f"auto_{mem}.ratio_to_fastest", chk["ratio"], LIMITS["auto_ratio"])
    if perf.get("device") == "cpu":
        put("sop_perf_wall_s", perf.get("wall_s"), LIMITS["cpu_wall_s"])
    return out
