"""Few-shot subsets and probes (sop_plugin.bench.evals.fewshot)."""

from __future__ import annotations

import pytest
import torch

from sop_plugin.bench.evals.fewshot import FewshotSettings, balanced_subset, fewshot_subsets, fewshot_top1


def test_balanced_subset_is_class_balanced_nested_and_seeded() -> None:
    labels = torch.arange(10).repeat_interleave(100)[
        torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    ]
    one = balanced_subset(labels, 0.01, seed=3)
    ten = balanced_subset(labels, 0.1, seed=3)
    assert one.numel() == 10 and ten.numel() == 100
    assert torch.equal(torch.bincount(labels[one]), torch.ones(10, dtype=torch.long))
    assert torch.equal(torch.bincount(labels[ten]), torch.full((10,), 10))
    assert set(one.tolist()) <= set(ten.tolist())  # nested for one seed
    assert torch.equal(one, balanced_subset(labels, 0.01, seed=3))
    assert not torch.equal(ten, balanced_subset(labels, 0.1, seed=4))
    assert torch.equal(ten, ten.sort().values)


def test_balanced_subset_caps_small_classes_and_skips_unlabelled() -> None:
    labels = torch.tensor([0] * 50 + [1] * 2 + [-1] * 48)
    idx = balanced_subset(labels, 0.2, seed=0)  # 20 % of 52 labelled / 2 classes = 5 per class
    assert (labels[idx] >= 0).all()
    assert torch.bincount(labels[idx]).tolist() == [5, 2]
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_fewshot_probe_learns_separable_features() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 4
    train_y = torch.arange(4).repeat(250)
    test_y = torch.arange(4).repeat(50)
    train_x = centres[train_y] + torch.randn(1000, 16, generator=gen)
    test_x = centres[test_y] + torch.randn(200, 16, generator=gen)
    settings = FewshotSettings(fractions={"1pct": 0.01, "10pct": 0.1}, epochs=50)
    subsets = fewshot_subsets(train_y, settings, seed=0)
    scores = fewshot_top1(train_x, train_y, test_x, test_y, subsets, settings, seed=0)
    assert set(scores) == {"1pct", "10pct"}
    assert scores["10pct"] >= 95.0 and scores["1pct"] >= 80.0
    assert scores == fewshot_top1(train_x, train_y, test_x, test_y, subsets, settings, seed=0)


def test_settings_from_config_mapping() -> None:
    s = FewshotSettings.from_mapping({"epochs": "20", "fractions": {"5pct": 0.05}})
    assert s.epochs == 20 and s.fractions == {"5pct": 0.05}
    with pytest.raises(ValueError, match="unknown setting"):
        FewshotSettings.from_mapping({"epoch": 3})
    with pytest.raises(ValueError, match="must be in"):
        FewshotSettings.from_mapping({"fractions": {"x": 2.0}})
