"""The suite in results.json, the report, the bars and the embedding map.

Modules: report.py, plots.py, embedding_map.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from sop_plugin.bench.evals.embedding_map import MapSettings, embed_2d, map_points, write_embedding_map
from sop_plugin.bench.results.plots import plot_suite_bars
from sop_plugin.bench.results.report import suite_rows, write_report
from sop_plugin.bench.results.schema import validate_results
from tests.bench.results.test_plots_report import PNG_MAGIC, _metrics


def _method(knn: float, seg: float) -> dict[str, object]:
    return {
        **_metrics(knn),
        "linear_top1": knn,
        "epochs": 1,
        "finetune_top1": knn + 2,
        "fewshot_top1": {"1pct": knn - 10, "10pct": knn - 4},
        "seg_miou": seg,
        "seg_pixel_acc": 70.0 + seg / 10,
    }


RESULTS = {
    "dataset": "fashion-mnist",
    "seed": 0,
    "profile": "quick",
    "raw_pixel_knn_top1": 84.59,
    "methods": {"sop": _method(80.0, 31.0), "dino": _method(78.0, 25.0)},
    "controls": {
        "random_init": {
            "finetune_top1": 70.0,
            "fewshot_top1": {"1pct": 60.0, "10pct": 68.0},
            "seg_miou": 20.0,
            "seg_pixel_acc": 70.5,
        },
        "raw_pixels": {"seg_miou": 15.0, "seg_pixel_acc": 68.0},
    },
    "embedding_map": {
        "file": "embedding_map.png",
        "backend": "umap",
        "points": 2000,
        "panels": ["sop", "dino"],
    },
}


def test_suite_rows_flatten_methods_then_controls() -> None:
    rows = suite_rows(RESULTS)
    assert list(rows) == ["sop", "dino", "random_init", "raw_pixels"]
    assert list(rows["sop"]) == [
        "finetune_top1",
        "fewshot_top1.1pct",
        "fewshot_top1.10pct",
        "seg_miou",
        "seg_pixel_acc",
    ]
    assert rows["raw_pixels"] == {"seg_miou": 15.0, "seg_pixel_acc": 68.0}
    plain = copy.deepcopy(RESULTS)
    for key in ("controls", "embedding_map"):
        del plain[key]
    for m in plain["methods"].values():
        for key in ("finetune_top1", "fewshot_top1", "seg_miou", "seg_pixel_acc"):
            del m[key]
    assert suite_rows(plain) == {}


def test_report_has_the_suite_table(tmp_path: Path) -> None:
    text = write_report(RESULTS, tmp_path).read_text()
    assert "## Evaluation suite" in text
    assert "| sop | **82.00** | **70.00** | **76.00** | **31.00** | **73.10** |" in text
    assert "| random init (control) | 70.00 | 60.00 | 68.00 | 20.00 | 70.50 |" in text
    assert "| raw pixels (control) | n/a | n/a | n/a | 15.00 | 68.00 |" in text
    assert "umap of 2000 test embeddings" in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["methods"]["sop"].update(seg_miou="high"), "seg_miou"),
        (lambda r: r["methods"]["dino"].update(fewshot_top1=[1, 2]), "fewshot_top1"),
        (lambda r: r["controls"].update(random_init=3), "controls"),
        (lambda r: r["controls"]["raw_pixels"].update(seg_pixel_acc=None), "seg_pixel_acc"),
    ],
)
def test_validate_results_checks_suite_fields(edit, message: str) -> None:
    validate_results(RESULTS)
    broken = copy.deepcopy(RESULTS)
    edit(broken)
    with pytest.raises(ValueError, match=message):
        validate_results(broken)


def test_suite_bars_and_embedding_map_pngs(tmp_path: Path) -> None:
    bars = plot_suite_bars(suite_rows(RESULTS), tmp_path / "suite.png")
    assert bars.read_bytes()[:8] == PNG_MAGIC
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    feats = {
        name: (rng.normal(size=(60, 8)) + labels[:, None] * 3, labels) for name in ("sop", "random_init")
    }
    settings = MapSettings(backend="tsne", max_points=40)
    path, backend = write_embedding_map(feats, ("a", "b", "c"), tmp_path / "map.png", settings, seed=0)
    assert backend == "tsne" and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    idx = map_points(60, 40, seed=0)
    assert (
        len(idx) == 40
        and np.array_equal(idx, np.sort(idx))
        and np.array_equal(idx, map_points(60, 40, seed=0))
    )


@pytest.mark.slow
def test_umap_backend_maps_clusters_apart() -> None:
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 40)
    x = rng.normal(size=(80, 16)) + labels[:, None] * 5
    xy, backend = embed_2d(x, MapSettings(backend="auto"), seed=0)
    assert backend == "umap" and xy.shape == (80, 2)
    centres = np.stack([xy[labels == k].mean(axis=0) for k in (0, 1)])
    spread = max(xy[labels == k].std(axis=0).max() for k in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread
    again, _ = embed_2d(x, MapSettings(backend="umap"), seed=0)
    assert np.allclose(xy, again)
