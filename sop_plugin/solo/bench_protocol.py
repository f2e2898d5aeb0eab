"""Score solo-learn checkpoints with the benchmark's protocol, so the two hosts' numbers sit side by side.

For each pretraining run (solo-learn's checkpoint of SOP, DINO or iBOT) the teacher backbone
(``momentum_backbone``) embeds the benchmark's training and test images ([CLS] features, as
``sop-bench`` evaluates every method), then the benchmark's weighted kNN (k = 20, cosine,
``exp(s / 0.07)``) and logistic-regression probe score them. Usage::

    python -m sop_plugin.solo.bench_protocol RUN_DIR... --data fashion-mnist --limit-train 20000 --out DIR

writes ``DIR/bench_protocol.json`` and ``.md`` (one row per run). With ``--bench RUN_DIR...`` (``sop-bench``
runs at the same budget, one per seed) the table puts each method's solo-learn numbers beside the bench's
mean and standard deviation over those seeds, with the difference in standard deviations and whether
the solo-learn number lies where one more bench seed would land with 95 % probability.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

from sop_plugin.bench.evals.probes import knn_top1, linear_probe
from sop_plugin.bench.results.stats import prediction_interval
from sop_plugin.bench.results.summary import load_run
from sop_plugin.data import get_dataset
from sop_plugin.runtime import load_checkpoint
from sop_plugin.solo.backbones import vit_custom


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of the latest epoch below ``run_dir`` (solo-learn's ``<name>-<id>-ep=N.ckpt``)."""
    found = sorted(run_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no .ckpt below {run_dir}: point at a pretraining run's checkpoint.dir")
    return found[-1]


def teacher_backbone(ckpt: Path) -> tuple[torch.nn.Module, dict]:
    """The run's teacher ViT (``momentum_backbone`` weights) and its config (``args.json`` beside the
    checkpoint)."""
    cfg = OmegaConf.to_container(OmegaConf.load(ckpt.parent / "args.json"))
    assert isinstance(cfg, dict)
    backbone = cfg["backbone"]
    if backbone["name"] != "vit_custom":
        name = backbone["name"]
        raise ValueError(f"{ckpt}: backbone {name!r}; this scorer rebuilds vit_custom backbones only")
    vit = vit_custom(**backbone["kwargs"])
    state = load_checkpoint(ckpt)["state_dict"]
    prefix = "momentum_backbone."
    vit.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return vit.eval(), cfg


@torch.no_grad()
def features(vit: torch.nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[CLS] features [N, D] of uint8 grey images [N, 1, H, W], read as RGB and normalised as in training."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    out = []
    for i in range(0, images.shape[0], 1024):
        x = images[i : i + 1024].float().div(255).expand(-1, 3, -1, -1)
        out.append(vit((x - m) / s).float())
    return torch.cat(out)


def score(run_dir: Path, data: str, path: str | None, limit_train: int | None) -> dict:
    """kNN and linear top-1 (%) of one run's teacher backbone under the benchmark's protocol."""
    ckpt = last_checkpoint(run_dir)
    vit, cfg = teacher_backbone(ckpt)
    train = get_dataset(data, path, "train", False)
    test = get_dataset(data, path, "test", False)
    if limit_train:
        train = train.subset(torch.arange(min(limit_train, len(train))))
    aug = cfg["augmentations"][0]
    train_x = features(vit, train.images, aug["mean"], aug["std"])
    test_x = features(vit, test.images, aug["mean"], aug["std"])
    return {
        "run": str(run_dir),
        "method": cfg["method"],
        "checkpoint": ckpt.name,
        "knn_top1": knn_top1(train_x, train.labels, test_x, test.labels, k=20, temperature=0.07),
        "linear_top1": linear_probe(train_x, train.labels, test_x, test.labels, epochs=30, seed=0),
        "train_images": len(train),
        "test_images": len(test),
    }


def bench_spread(specs: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Per method and metric, the values of the ``sop-bench`` runs, one per seed.

    Args:
        specs: ``RUN_DIR`` or ``RUN_DIR:METHOD,...`` (only those methods of that run), as for ``summary``.
    """
    spread: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        for method, metrics in load_run(spec)["methods"].items():
            for key in ("knn_top1", "linear_top1"):
                spread.setdefault(method, {}).setdefault(key, []).append(float(metrics[key]))
    return spread


def side_by_side(rows: Sequence[dict], spread: dict[str, dict[str, list[float]]]) -> list[str]:
    """Markdown rows: solo-learn's number beside the bench's mean ± sd (n seeds), their difference in sds,
    and whether it lies in the 95 % prediction interval of one more bench seed (``prediction_interval``)."""
    lines = [
        "| method | metric | solo-learn | bench mean ± sd (seeds) | solo − bench | in bench sds "
        "| one more bench seed (95 %) | solo-learn inside |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        for key, name in (("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1")):
            values = spread.get(r["method"], {}).get(key, [])
            interval = prediction_interval(values)
            if interval is None:
                continue
            mean, sd = statistics.mean(values), statistics.stdev(values)
            diff = r[key] - mean
            ratio = f"{diff / sd:+.1f}" if sd > 0 else "n/a"
            bench = f"{mean:.2f} ± {sd:.2f} ({len(values)})"
            inside = "yes" if interval[0] <= r[key] <= interval[1] else "no"
            band = f"[{interval[0]:.2f}, {interval[1]:.2f}] | {inside}"
            cells = [r["method"], name, f"{r[key]:.2f}", bench, f"{diff:+.2f}", ratio, band]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining runs (their checkpoint.dir)")
    parser.add_argument("--data", default="fashion-mnist", help="the benchmark's dataset name")
    parser.add_argument("--path", default=None, help="its data.path (default: the dataset's own)")
    parser.add_argument(
        "--limit-train", type=int, default=None, help="the first N training images (train.limit_train_images)"
    )
    parser.add_argument(
        "--bench", nargs="*", default=[], help="sop-bench runs at the same budget (RUN_DIR[:METHOD,...])"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [score(run, args.data, args.path, args.limit_train) for run in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_protocol.json").write_text(json.dumps(rows, indent=2))
    lines = ["| run | method | kNN top-1 | linear top-1 | train / test images |", "|---|---|---:|---:|---|"]
    for r in rows:
        images = f"{r['train_images']} / {r['test_images']}"
        scores = f"{r['knn_top1']:.2f} | {r['linear_top1']:.2f}"
        lines.append(f"| `{r['run']}` | {r['method']} | {scores} | {images} |")
    if args.bench:
        lines += ["", *side_by_side(rows, bench_spread(args.bench))]
    (args.out / "bench_protocol.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
