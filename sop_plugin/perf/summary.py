"""The few console lines ``sop-perf`` prints at the end of a run (the full record is perf.json).

Per step setting: each method's median step time (on CUDA also the CUDA-event time and the kernels'
busy share) and peak memory, SOP's step-time ratios and retrieval share; per agreement row: the time
against the CPU reference and the agreement; ``auto``'s choices; every target's verdict.
"""

from __future__ import annotations

from typing import Any

from sop_plugin.perf.settings import METHODS


def summary(perf: dict[str, Any]) -> str:
    """A few lines for the console from ``perf`` (perf.json's dict)."""
    lines = [_setting_text(s, rec) for s, rec in perf["step"].items()]
    lines += [_agreement_text(r) for r in perf.get("agreement", [])]
    if perf.get("auto_choice"):
        lines.append("auto: " + ", ".join(f"{m} rows -> {b}" for m, b in perf["auto_choice"].items()))
    for name, t in perf.get("targets", {}).items():
        verdict = "ok  " if t["met"] else "MISS"
        lines.append(f"  {verdict} {name} = {t['value']:.4g} (limit {t['limit']})")
    return "\n".join(lines)


def _setting_text(setting: str, rec: dict[str, Any]) -> str:
    """One step setting's line: methods, ratios and the retrieval share."""
    parts = [_step_text(rec[m], m) for m in METHODS if m in rec]
    parts += [f"{k.removeprefix('ratio_')} {v:.3f}" for k, v in rec.items() if k.startswith("ratio_")]
    frac = rec.get("retrieval_fraction")
    if frac is not None:
        parts.append(f"retrieval {frac:.1%}")
    tag = "" if rec.get("target_setting", True) else " (reference, no targets)"
    return f"{setting}{tag}: " + ", ".join(parts)


def _step_text(rec: dict[str, Any], method: str) -> str:
    """One method's median step (CUDA: events and kernel share too) and its peak memory."""
    text = f"{method} {rec['median_s']:.3f} s"
    if "gpu_median_s" in rec:
        text += f" (GPU events {rec['gpu_median_s']:.3f} s"
        if "gpu_busy_fraction" in rec:
            text += f", kernels {rec['gpu_busy_fraction']:.0%} busy"
        text += ")"
    return text + f" / {rec['peak_mb']:.0f} MiB"


def _agreement_text(r: dict[str, Any]) -> str:
    """One agreement row: its time against the CPU reference, the agreement, or why it is missing."""
    head = f"agreement {r['backend']} on {r['device']}, {r['memory']} rows, {r['queries']} queries"
    if not r.get("available", False):
        return f"{head}: unavailable ({r.get('reason', '?')})"
    return (
        f"{head}: {r['median_s'] * 1e3:.2f} ms (CPU reference {r['reference_s'] * 1e3:.1f} ms), "
        f"agreement {r['index_agreement']:.5f}, ties aside {r['agreement_ties_aside']:.5f}, "
        f"excluded returned: {r['excluded_returned']}"
    )
