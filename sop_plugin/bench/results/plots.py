"""PNG plots for the benchmark report.

Learning curves, collapse curves, metric bars, SOP grids, embedding maps.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas
directly, never through pyplot, so no display or global backend is touched
and nothing leaks between calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from torch import Tensor

from sop_plugin.bench.evals.collapse import STAT_LABELS, stat_label

ANCHOR_FRAME_COLOR = "tab:red"


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to a PNG at ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]], floor: float | None, path: str | Path
) -> Path:
    """kNN top-1 per epoch for every method on one chart; ``floor`` as a dashed line."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for method, points in curves.items():
        if not points:
            continue
        epochs, accs = zip(*points, strict=True)
        ax.plot(epochs, accs, marker="o", markersize=3, label=method)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", label=f"raw pixels ({floor:.1f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("kNN top-1 during training")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def plot_collapse(
    histories: Mapping[str, Sequence[Mapping[str, float | None]]], path: str | Path, k: int = 8, cols: int = 4
) -> Path:
    """Collapse diagnostics over training: one panel per statistic, one line per method.

    ``histories``: method -> its measurements (``{"epoch", <stat>: value or None}``, as
    :class:`~sop_plugin.bench.train.callbacks.CollapseMonitor` records them); a panel per statistic that
    some method has (SOP's class-memory and SE panels hold SOP alone).
    """
    present = {key for hist in histories.values() for h in hist for key, v in h.items() if v is not None}
    stats = [key for key in STAT_LABELS if key in present]
    if not stats:
        raise ValueError("no collapse statistics to plot")
    rows = -(-len(stats) // cols)
    fig = Figure(figsize=(3.2 * min(cols, len(stats)), 2.5 * rows + 0.5))
    axes = fig.subplots(rows, min(cols, len(stats)), squeeze=False)
    for ax, key in zip(axes.flat, stats):
        for i, (method, hist) in enumerate(histories.items()):
            pts = [
                (float(h["epoch"]), float(v))
                for h in hist
                if (v := h.get(key)) is not None and h.get("epoch") is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=method, color=f"C{i}")
        ax.set_title(stat_label(key, k), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)  # plain values, no "+3.56" offset
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(stats) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1 : len(stats)]:  # a method missing from the first panel
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(
        "Collapse diagnostics of the teacher on the probe set (epoch 0: initialisation)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 0.93, 0.96))
    return _save(fig, path)


def plot_metric_bars(
    results: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    path: str | Path,
    title: str = "Final metrics",
    labels: Mapping[str, str] | None = None,
    legend_outside: bool = False,
) -> Path:
    """Grouped bars: one group per metric, one bar per method, value printed on top (none where missing)."""
    methods = list(results)
    fig = Figure(figsize=(max(5.0, 1.6 * len(metrics) + 2.0), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(metrics))
    for i, method in enumerate(methods):
        values = [float(results[method].get(m, float("nan"))) for m in metrics]
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, label=method)
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.1f}" for v in values], fontsize=7)
    ax.set_xticks(x, [(labels or {}).get(m, m) for m in metrics])
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if methods:
        ax.legend(
            **({"loc": "upper left", "bbox_to_anchor": (1.0, 1.0), "fontsize": 8} if legend_outside else {})
        )
    return _save(fig, path)


def plot_sweep(
    values: Sequence[float],
    scores: Mapping[str, Sequence[float]],
    key: str,
    metric: str,
    path: str | Path,
    floor: float | None = None,
) -> Path:
    """One line per method: ``metric`` against the swept setting ``key`` (log x axis)."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for method, ys in scores.items():
        ax.plot(values, ys, marker="o", label=method)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", label=f"raw pixels ({floor:.1f})")
    if min(values) > 0:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(list(values), [f"{v:g}" for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} per {key}, same grid for every method")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_length_curve(
    points: Mapping[str, Sequence[tuple[float, float]]],
    fits: Mapping[str, tuple[float, float, float]],
    floor: float,
    path: str | Path,
) -> Path:
    """Measured kNN top-1 per run length (dots) and each method's ``a + b ln(epochs)`` fit, extended
    to ``reach``, the length where it meets the raw-pixel ``floor`` (at most 4x its longest run);
    ``fits``: method -> ``(a, b, reach)``."""
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot()
    for i, (method, pts) in enumerate(points.items()):
        color = f"C{i}"
        longest, shortest = max(e for e, _ in pts), min(e for e, _ in pts)  # this method's measured range
        ax.scatter([e for e, _ in pts], [s for _, s in pts], color=color, label=method, zorder=3)
        a, b, reach = fits[method]
        xs = np.geomspace(shortest, longest, 20)
        ax.plot(xs, a + b * np.log(xs), color=color)
        end = min(max(longest, reach), 4 * longest)
        if end > longest:
            xs = np.geomspace(longest, end, 20)
            ax.plot(xs, a + b * np.log(xs), color=color, linestyle=":")
    ax.axhline(floor, color="gray", linestyle="--", label=f"raw pixels ({floor:.1f})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("epochs of the run (each run its own schedule)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("kNN against run length; dotted: extrapolated fit")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _as_image(img: Tensor) -> tuple[np.ndarray, str | None]:
    """uint8 ``[C, H, W]`` -> array for ``imshow`` plus the colormap to use."""
    arr = img.detach().cpu().numpy()
    if arr.shape[0] == 1:
        return arr[0], "gray"
    return np.transpose(arr[:3], (1, 2, 0)), None


def plot_sop_grid(
    anchor_images: Tensor,
    support_images: Tensor,
    path: str | Path,
    similarities: Tensor | Sequence[Sequence[float]] | None = None,
) -> Path:
    """One row per SOP: its anchor (framed) then its k support-embedding images.

    ``anchor_images`` is uint8 ``[P, C, H, W]``, ``support_images`` uint8
    ``[P, k, C, H, W]``; ``similarities`` (``[P, k]``, optional) become small
    titles over the support images.
    """
    if anchor_images.dim() != 4 or support_images.dim() != 5:
        raise ValueError("expected anchors [P, C, H, W] and supports [P, k, C, H, W]")
    n_sop, k = support_images.shape[:2]
    if anchor_images.shape[0] != n_sop:
        raise ValueError(f"{anchor_images.shape[0]} anchors but {n_sop} support rows")
    sims = None if similarities is None else torch.as_tensor(similarities, dtype=torch.float32)
    if sims is not None and tuple(sims.shape) != (n_sop, k):
        raise ValueError(f"similarities must have shape {(n_sop, k)}, got {tuple(sims.shape)}")

    fig = Figure(figsize=(1.1 * (k + 1), 1.2 * n_sop + 0.3))
    axes = fig.subplots(n_sop, k + 1, squeeze=False)
    for row in range(n_sop):
        cells = [anchor_images[row], *support_images[row]]
        for col, img in enumerate(cells):
            ax = axes[row, col]
            arr, cmap = _as_image(img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                for spine in ax.spines.values():
                    spine.set_edgecolor(ANCHOR_FRAME_COLOR)
                    spine.set_linewidth(3)
                if row == 0:
                    ax.set_title("anchor", fontsize=7)
            else:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if sims is not None:
                    ax.set_title(f"{float(sims[row, col - 1]):.3f}", fontsize=7)
    fig.suptitle("SOPs: anchor and support embeddings", fontsize=9)
    return _save(fig, path)


def plot_suite_bars(rows: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """The evaluation suite's bars: one group per metric, one bar per method and control.

    ``rows``: name -> flat metrics, as :func:`sop_plugin.bench.results.report.suite_rows` gives them.
    """
    metrics = list(dict.fromkeys(k for row in rows.values() for k in row))
    labels = {
        k: k.replace("fewshot_top1.", "fewshot ").replace("_top1", "").replace("seg_", "seg ")
        for k in metrics
    }
    return plot_metric_bars(
        rows, metrics, path, title="Evaluation suite (teacher backbone)", labels=labels, legend_outside=True
    )


def plot_embedding_map(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: str | Path,
    backend: str,
) -> Path:
    """One scatter panel per name (``(xy [N, 2], labels [N])``), one colour per class, a shared legend."""
    names = list(panels)
    if not names:
        raise ValueError("no embeddings to map")
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.4 * cols, 3.4 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    n_classes = len(class_names)
    name = "turbo"
    if n_classes <= 20:
        name = "tab20"
    if n_classes <= 10:
        name = "tab10"
    palette = colormaps[name]
    handles = []
    for ax, name in zip(axes.flat, names):
        xy, labels = panels[name]
        for k, cname in enumerate(class_names):
            sel = labels == k
            if not sel.any():
                continue
            colour = palette(k if n_classes <= 20 else k / max(1, n_classes - 1))
            h = ax.scatter(xy[sel, 0], xy[sel, 1], s=2, color=colour, label=cname, rasterized=True)
            if ax is axes.flat[0]:
                handles.append(h)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if n_classes <= 20:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 5),
            fontsize=7,
            markerscale=4,
            frameon=False,
        )
    label = {"umap": "UMAP (cosine)", "tsne": "t-SNE (cosine)"}.get(backend, backend)
    fig.suptitle(f"Test embeddings of the teacher backbone, {label}", fontsize=10)
    fig.subplots_adjust(bottom=0.12 if n_classes <= 20 else 0.02)
    return _save(fig, path)
