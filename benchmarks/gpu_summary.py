"""The short table that ``benchmarks/gpu_run.sh`` prints last (and writes to ``OUT/summary.md``).

Reads what the stages left in ``OUT`` (``perf.json``, ``retrieval.json``, ``bench_results.json``,
``solo.json``) and the stage log ``stages.tsv`` (id, name, status, seconds, timeout; one line per
stage, tab-separated). A stage without its file says so instead of failing.

Usage: ``python benchmarks/gpu_summary.py OUT STAGES_TSV``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METHODS = ("sop", "ibot", "dino")


def _load(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def perf_result(perf: dict[str, Any] | None) -> list[str]:
    """Step time (wall, CUDA events, kernel busy share) and peak memory per method; SOP's top phases."""
    if not perf or not perf.get("step"):
        return ["no perf.json"]
    lines = []
    for setting, rec in perf["step"].items():
        parts = []
        for m in METHODS:
            if m not in rec:
                continue
            r = rec[m]
            text = f"{m.upper() if m != 'ibot' else 'iBOT'} {r['median_s'] * 1e3:.0f} ms"
            if "gpu_median_s" in r:
                text += f" (GPU {r['gpu_median_s'] * 1e3:.0f} ms"
                text += f", kernels {r['gpu_busy_fraction']:.0%})" if "gpu_busy_fraction" in r else ")"
            parts.append(f"{text}, {r['peak_mb']:.0f} MiB")
        others = [o for o in ("ibot", "dino") if f"ratio_sop_over_{o}" in rec]
        ratios = ", ".join(f"SOP/{o} {rec[f'ratio_sop_over_{o}']:.2f}" for o in others)
        lines.append(f"{setting}, batch {rec.get('batch_size')}, {rec.get('precision')}: " + "; ".join(parts))
        if ratios:
            lines.append(ratios)
        breakdown = perf.get("breakdown", {}).get(setting)
        if breakdown:
            top = sorted(breakdown["fraction"].items(), key=lambda kv: -kv[1])[:4]
            lines.append("SOP step: " + ", ".join(f"{c} {f:.0%}" for c, f in top))
    return lines


def retrieval_result(data: dict[str, Any] | None) -> list[str]:
    """Per backend and memory size: time on the device, agreement with the CPU search."""
    rows = (data or {}).get("agreement")
    if not rows:
        return ["no retrieval.json"]
    lines = []
    for r in rows:
        head = f"{r['backend']} on {r['device']}, {r['memory']:,} rows"
        if not r.get("available"):
            lines.append(f"{head}: unavailable ({r.get('reason')})")
            continue
        lines.append(
            f"{head}: {r['median_s'] * 1e3:.2f} ms vs CPU {r['reference_s'] * 1e3:.0f} ms, "
            f"agreement {r['index_agreement']:.4f} (ties aside {r['agreement_ties_aside']:.4f})"
            + (", EXCLUDED ROW RETURNED" if r.get("excluded_returned") else "")
        )
    return lines


def bench_result(res: dict[str, Any] | None) -> list[str]:
    """kNN and linear top-1 per method against the raw-pixel floor; collapse diagnostics."""
    if not res or not res.get("methods"):
        return ["no bench_results.json"]
    lines = [f"raw-pixel kNN floor {res.get('raw_pixel_knn_top1', float('nan')):.2f}"]
    for m, r in res["methods"].items():
        knn, linear = r.get("knn_top1", float("nan")), r.get("linear_top1", float("nan"))
        text = f"{m}: kNN {knn:.2f}, linear {linear:.2f}"
        final = (r.get("collapse") or {}).get("final") or {}
        if "backbone_erank" in final:
            text += f", backbone erank {final['backbone_erank']:.1f}"
        if "memory_erank" in final:
            text += f", memory erank {final['memory_erank']:.1f}"
        if "step_seconds_median" in r:
            text += f", step {r['step_seconds_median'] * 1e3:.0f} ms"
        lines.append(text)
    return lines


def solo_result(data: dict[str, Any] | None) -> list[str]:
    """PASS/FAIL per method: steps, finite losses, SOP's memory fill."""
    if not data or not data.get("methods"):
        return ["no solo.json"]
    lines = []
    for m, r in data["methods"].items():
        text = f"{m}: {'PASS' if r.get('ok') else 'FAIL'}, steps {r.get('global_step', '?')}"
        text += ", losses finite" if (r.get("losses") or {}).get("ok") else ", losses not finite or missing"
        mem = (r.get("memories") or {}).get("class_memory")
        if mem:
            text += f", class memory {mem['changed_rows']:,}/{mem['rows']:,} rows filled"
        if r.get("reason"):
            text += f" ({r['reason']})"
        lines.append(text)
    return lines


def collect(out: Path, stages_tsv: Path) -> list[tuple[list[str], list[str]]]:
    """Per stage that ran (in stage order): its fields (id, name, status, seconds, limit) and result lines."""
    results = {
        "1": perf_result(_load(out / "perf.json")),
        "2": retrieval_result(_load(out / "retrieval.json")),
        "3": bench_result(_load(out / "bench_results.json")),
        "4": solo_result(_load(out / "solo.json")),
    }
    stages = []
    if stages_tsv.is_file():
        for line in stages_tsv.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 5:
                stages.append(fields[:5])
    return [(f, [] if f[2].startswith("skipped") else results.get(f[0], [])) for f in sorted(stages)]


def markdown(rows: list[tuple[list[str], list[str]]]) -> str:
    """The table as markdown (summary.md)."""
    lines = ["| stage | status | s (limit) | result |", "|---|---|---|---|"]
    for (sid, name, status, seconds, limit), result in rows:
        lines.append(f"| {sid} {name} | {status} | {seconds} ({limit}) | {'<br>'.join(result)} |")
    return "\n".join(lines)


def console(rows: list[tuple[list[str], list[str]]]) -> str:
    """The table as aligned text: one line per stage, its further result lines indented below."""
    heads = [f"{sid} {name}" for (sid, name, *_), _ in rows]
    width = max([len(h) for h in heads] + [5])
    status_w = max([len(f[2]) for f, _ in rows] + [6])
    lines = [f"{'stage':<{width}}  {'status':<{status_w}}  {'s (limit)':<11}  result"]
    for head, ((_, _, status, seconds, limit), result) in zip(heads, rows):
        first, *rest = result or [""]
        lines.append(f"{head:<{width}}  {status:<{status_w}}  {f'{seconds} ({limit})':<11}  {first}")
        lines += [f"{'':<{width + status_w + 17}}{more}" for more in rest]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``OUT STAGES_TSV`` -> ``OUT/summary.md`` and the table on the console; 2 on bad arguments."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(args[0])
    rows = collect(out, Path(args[1]))
    (out / "summary.md").write_text(markdown(rows) + "\n")
    print(console(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
