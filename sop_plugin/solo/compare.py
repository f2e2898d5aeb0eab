"""``sop-solo-compare RUN_DIR... [--out DIR]``: one table and one figure from solo-learn runs.

Each RUN_DIR is one pretraining run (``scripts/compare/<dataset>.sh`` gives each method its own):
the newest Lightning ``metrics.csv`` below it is read (the CSV logger of our configs,
``csv.dir``; Lightning's default logger writes the same file under ``default_root_dir``). The
method is taken from the run's ``hparams.yaml`` (``method``) or else from the folder name.
Written to ``--out`` (default: the current directory): ``comparison.md`` (per run: best and last
``val_knn_acc1``, ``val_clean_knn_acc1`` where logged, ``val_acc1``, epochs, wall time, steps per
second) and ``comparison.png`` (online kNN accuracy and training loss per epoch, all runs on one
axis). Reads files only: needs neither solo-learn nor a GPU.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: the objective's epoch-mean loss, per method (solo-learn's DINO logs ``dino_loss``)
LOSS_COLUMNS = ("train_sop_loss_epoch", "train_ibot_loss_epoch", "dino_loss_epoch")
ACCURACIES = ("val_knn_acc1", "val_clean_knn_acc1", "val_acc1")


@dataclass
class Run:
    """The per-epoch series of one run (epoch -> value) and its totals."""

    name: str
    path: Path
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    steps: int = 0
    wall_s: float | None = None

    @property
    def epochs(self) -> int:
        """Epochs logged (the last epoch + 1; 0 without any)."""
        return 1 + max((e for s in self.series.values() for e in s), default=-1)

    def best(self, key: str) -> float | None:
        """The highest value of ``key`` over the epochs (None: never logged)."""
        values = self.series.get(key, {})
        return max(values.values()) if values else None

    def last(self, key: str) -> float | None:
        """The value of ``key`` at its last logged epoch (None: never logged)."""
        values = self.series.get(key, {})
        return values[max(values)] if values else None

    def loss_key(self) -> str | None:
        """The column of the objective's epoch-mean loss: a known method's, else the first other
        training loss (None: no loss logged)."""
        for key in LOSS_COLUMNS:
            if key in self.series:
                return key
        others = [k for k in self.series if k.endswith("loss_epoch") and "class" not in k and k != "val_loss"]
        return sorted(others)[0] if others else None


def _method_of(csv_path: Path, run_dir: Path) -> str:
    """The run's method: ``method`` of the ``hparams.yaml`` beside its log, else the run folder's name."""
    hparams = csv_path.parent / "hparams.yaml"
    if hparams.is_file():
        for line in hparams.read_text().splitlines():
            if line.startswith("method:"):
                return line.split(":", 1)[1].strip().strip("'\"")
    return run_dir.name


def read_run(run_dir: str | Path) -> Run:
    """The newest ``metrics.csv`` below ``run_dir`` as a :class:`Run` (``ValueError`` if none)."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ValueError(
            f"{run_dir}: no metrics.csv below it; pretrain with the CSV logger on (csv.enabled=True in our "
            "configs, or Lightning's default logger with ++default_root_dir=DIR) and pass that folder"
        )
    path = found[-1]
    if len(found) > 1:
        note = f"sop-solo-compare: {run_dir} holds {len(found)} logs; reading the newest, {path}"
        print(note, file=sys.stderr)
    run = Run(_method_of(path, run_dir), path)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch") or ""
            if row.get("step"):
                run.steps = max(run.steps, int(float(row["step"])) + 1)
            if row.get("wall_time_s"):
                run.wall_s = max(run.wall_s or 0.0, float(row["wall_time_s"]))
            if not epoch:
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or not value:
                    continue
                try:
                    run.series.setdefault(key, {})[int(float(epoch))] = float(value)
                except ValueError:
                    continue
    return run


def _fmt(value: float | None, pct: bool = False) -> str:
    """A table cell: a percentage with two decimals (``pct``) or three significant digits; n/a if none."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if pct else f"{value:.3g}"


def markdown_table(runs: Sequence[Run]) -> str:
    """The comparison as a markdown table, one row per run."""
    clean = any("val_clean_knn_acc1" in r.series for r in runs)
    head = ["run", "kNN acc@1 best", "kNN acc@1 last"]
    head += ["clean kNN best", "clean kNN last"] if clean else []
    head += ["linear acc@1 best", "linear acc@1 last", "epochs", "wall time (s)", "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        keys = ["val_knn_acc1", *(["val_clean_knn_acc1"] if clean else []), "val_acc1"]
        cells = [r.name]
        for key in keys:
            cells += [_fmt(r.best(key), pct=True), _fmt(r.last(key), pct=True)]
        rate = r.steps / r.wall_s if r.wall_s else None
        cells += [str(r.epochs), _fmt(r.wall_s), _fmt(rate)]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nkNN: solo-learn's online kNN (k and distance from `knn_eval`); linear: its online linear "
        "classifier on detached features (`val_acc1`); clean kNN: `clean_knn` (un-augmented train "
        "images as the bank); all on the validation folder, in %. Wall time: from the start of "
        "training to the last epoch's end, validation included; steps/s: optimisation steps / wall "
        "time."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def plot_curves(runs: Sequence[Run], path: Path) -> Path:
    """kNN accuracy and training loss per epoch, every run on the same two axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    ax_knn, ax_loss = fig.subplots(1, 2)
    for r in runs:
        for key, style in (("val_knn_acc1", "-"), ("val_clean_knn_acc1", "--")):
            if key in r.series:
                epochs = sorted(r.series[key])
                label = r.name if key == "val_knn_acc1" else f"{r.name} (clean)"
                ax_knn.plot(epochs, [r.series[key][e] for e in epochs], style, marker="o", label=label)
        loss = r.loss_key()
        if loss:
            epochs = sorted(r.series[loss])
            ax_loss.plot(epochs, [r.series[loss][e] for e in epochs], marker="o", label=f"{r.name} ({loss})")
    ax_knn.set(xlabel="epoch", ylabel="val kNN acc@1 (%)", title="online kNN")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss (epoch mean)")
    for ax in (ax_knn, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return path


def compare(run_dirs: Sequence[str | Path], out: str | Path = ".") -> tuple[Path, Path]:
    """Read ``run_dirs``, write ``comparison.md`` and ``comparison.png`` to ``out``; returns both paths."""
    runs = [read_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for r in runs:  # two runs of one method: tell them apart by folder
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({r.path.parent})"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "comparison.md"
    table.write_text("# SOP vs DINO vs iBOT (solo-learn)\n\n" + markdown_table(runs))
    return table, plot_curves(runs, out / "comparison.png")


def main(argv: Sequence[str] | None = None) -> None:
    """The command line ``sop-solo-compare RUN_DIR... [--out DIR]`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="sop-solo-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one folder per pretraining run")
    parser.add_argument("--out", default=".", help="where comparison.md and comparison.png go (default: .)")
    args = parser.parse_args(argv)
    try:
        table, figure = compare(args.run_dirs, args.out)
    except ValueError as exc:
        parser.exit(2, f"sop-solo-compare: {exc}\n")
    print(table.read_text())
    print(f"wrote {table} and {figure}")


if __name__ == "__main__":
    main()
