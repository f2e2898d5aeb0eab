"""The PNG of ``sop-perf``: step times, SOP's step breakdown, retrieval time against memory size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sop_plugin.perf.breakdown import CATEGORIES  # noqa: E402

COLORS = {"sop": "tab:red", "ibot": "tab:blue", "dino": "tab:green"}


def plot_perf(perf: dict[str, Any], path: Path) -> Path:
    """Three panels from a ``perf.json`` dict; returns ``path``."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))
    _steps(axes[0], perf.get("step", {}))
    _breakdown(axes[1], perf.get("breakdown", {}))
    _retrieval(axes[2], perf.get("retrieval", []))
    fig.suptitle(perf.get("machine", "")[:160], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _steps(ax: Any, step: dict[str, Any]) -> None:
    """Median step seconds per setting, one bar per method (log scale); ``step``: perf.json's ``step``."""
    settings = list(step)
    width = 0.25
    for j, method in enumerate(("sop", "ibot", "dino")):
        xs = [i + (j - 1) * width for i in range(len(settings))]
        ys = [step[s].get(method, {}).get("median_s", 0.0) for s in settings]
        ax.bar(xs, ys, width, label=method, color=COLORS[method])
    ax.set_xticks(range(len(settings)), settings)
    ax.set_yscale("log")
    ax.set_ylabel("median seconds per step")
    ax.set_title("training step (same backbone, crops, batch)")
    ax.legend()


def _breakdown(ax: Any, breakdown: dict[str, Any]) -> None:
    """SOP's step split into :data:`CATEGORIES`, as shares, one stacked bar per setting."""
    settings = list(breakdown)
    cmap = plt.get_cmap("tab20")
    left = [0.0] * len(settings)
    for c_i, cat in enumerate(CATEGORIES):
        vals = [breakdown[s]["fraction"].get(cat, 0.0) for s in settings]
        ax.barh(settings, vals, left=left, color=cmap(c_i), label=cat)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of SOP's step")
    ax.set_title("where SOP's step goes")
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))


def _retrieval(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Median search seconds against memory rows per backend, at 256 queries (or the first count)."""
    if not rows:
        return
    q = 256 if any(r["queries"] == 256 for r in rows) else rows[0]["queries"]
    for name in sorted({r["backend"] for r in rows}):
        pts = sorted((r["memory"], r["median_s"]) for r in rows if r["backend"] == name and r["queries"] == q)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memory rows (d = 256)")
    ax.set_ylabel("median seconds per search")
    ax.set_title(f"SE retrieval, {q} queries, k = {rows[0]['k']}")
    ax.legend(fontsize=8)
