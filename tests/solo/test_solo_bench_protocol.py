"""``python -m sop_plugin.solo.bench_protocol``: a solo-learn checkpoint scored with the benchmark's kNN
and probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch  # noqa: E402

from sop_plugin.bench.evals.probes import knn_top1  # noqa: E402
from sop_plugin.data import get_dataset  # noqa: E402
from sop_plugin.solo.backbones import vit_custom  # noqa: E402
from sop_plugin.solo.bench_protocol import features, main, teacher_backbone  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KWARGS = {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
MEAN, STD = [0.3] * 3, [0.35] * 3


def fake_run(root: Path) -> tuple[Path, torch.nn.Module]:
    """A run folder as solo-learn's Checkpointer leaves it: ``args.json`` and a checkpoint whose teacher
    differs from its student."""
    torch.manual_seed(0)
    student, teacher = vit_custom(**KWARGS), vit_custom(**KWARGS)
    state = {f"backbone.{k}": v for k, v in student.state_dict().items()}
    state.update({f"momentum_backbone.{k}": v for k, v in teacher.state_dict().items()})
    folder = root / "sop" / "abc"
    folder.mkdir(parents=True)
    args = {
        "method": "sop",
        "backbone": {"name": "vit_custom", "kwargs": KWARGS},
        "augmentations": [{"mean": MEAN, "std": STD}],
    }
    (folder / "args.json").write_text(json.dumps(args))
    torch.save({"state_dict": state, "epoch": 0}, folder / "sop-abc-ep=0.ckpt")
    return root / "sop", teacher


def test_scores_the_teacher_backbone_with_the_bench_knn(tmp_path: Path, tiny_data: Path) -> None:
    run, teacher = fake_run(tmp_path)
    vit, cfg = teacher_backbone(next(run.rglob("*.ckpt")))
    assert cfg["method"] == "sop"
    for a, b in zip(vit.state_dict().values(), teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the momentum (teacher) backbone, not the student
    main([str(run), "--path", str(tiny_data), "--out", str(tmp_path / "out")])
    (row,) = json.loads((tmp_path / "out" / "bench_protocol.json").read_text())
    train = get_dataset("fashion-mnist", tiny_data, "train")
    test = get_dataset("fashion-mnist", tiny_data, "test")
    train_x = features(teacher.eval(), train.images, MEAN, STD)
    test_x = features(teacher, test.images, MEAN, STD)
    expected = knn_top1(train_x, train.labels, test_x, test.labels, k=20, temperature=0.07)
    assert row["knn_top1"] == pytest.approx(expected) and 0 <= row["linear_top1"] <= 100
    assert (row["train_images"], row["test_images"]) == (len(train), len(test))
    assert "| sop |" in (tmp_path / "out" / "bench_protocol.md").read_text()


def test_side_by_side_puts_solo_beside_the_bench_seeds(tmp_path: Path) -> None:
    from sop_plugin.solo.bench_protocol import bench_spread, side_by_side

    template = json.loads((REPO / "docs/results/standard/seed0/results.json").read_text())
    specs = []
    for seed, knn in enumerate((70.0, 72.0, 74.0)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        results = {**template, "seed": seed}
        methods = {m: {**r, "knn_top1": 0.0} for m, r in template["methods"].items()}  # left out by ``:sop``
        methods["sop"] = {**methods["sop"], "knn_top1": knn, "linear_top1": 60.0 + seed}
        results["methods"] = methods
        (run / "results.json").write_text(json.dumps(results))
        specs.append(f"{run}:sop")
    rows = [{"method": "sop", "knn_top1": 76.0, "linear_top1": 61.0}]
    spread = bench_spread(specs)
    assert set(spread) == {"sop"}
    lines = side_by_side(rows, spread)
    # one more seed of N(72, 2) lands in 72 ± t(0.975, 2) * 2 * sqrt(1 + 1/3) = 72 ± 9.94 (95 %)
    assert "| sop | kNN top-1 | 76.00 | 72.00 ± 2.00 (3) | +4.00 | +2.0 | [62.06, 81.94] | yes |" in lines
    assert "| sop | linear top-1 | 61.00 | 61.00 ± 1.00 (3) | +0.00 | +0.0 | [56.03, 65.97] | yes |" in lines
    far = side_by_side([{"method": "sop", "knn_top1": 90.0, "linear_top1": 61.0}], spread)
    assert far[2].endswith("| [62.06, 81.94] | no |")
