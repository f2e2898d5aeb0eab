"""Segmentation canvases, mask folders and the 1x1 patch-token probe (sop_plugin.bench.evals.segmentation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sop_plugin.bench.evals.seg_data as seg
from sop_plugin.bench.evals.seg_data import IGNORE, SegSettings, canvas_sets, load_mask_folder, make_canvases
from sop_plugin.bench.evals.segmentation import (
    pixel_patch_tokens,
    seg_probe,
    segmentation_scores,
    vit_patch_tokens,
)
from sop_plugin.bench.train.encoder import MaskedEncoder, build_vit

NAMES = tuple(f"c{k}" for k in range(4))


def _items(n: int, value: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 items: a ``value``-bright square (class = its size) on black."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 4 : 12 + 4 * c, 4 : 12 + 4 * c] = value
    return images, labels


def test_canvases_label_foreground_and_are_seeded() -> None:
    images, labels = _items(20, 200)
    settings = SegSettings(grid=2, jitter=3, fill_prob=0.75)
    a = make_canvases(images, labels, 30, settings, seed=1, class_names=NAMES)
    assert a.images.shape == (30, 1, 56, 56) and a.masks.shape == (30, 56, 56)
    assert a.class_names == ("background", *NAMES) and a.num_classes == 5
    fg = a.masks > 0
    assert (a.images[:, 0][~fg] == 0).all() and (a.images[:, 0][fg] == 200).all()
    assert fg.flatten(1).any(dim=1).all()  # every canvas holds at least one item
    assert set(torch.unique(a.masks).tolist()) <= {0, 1, 2, 3, 4}
    b = make_canvases(images, labels, 30, settings, seed=1, class_names=NAMES)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    c = make_canvases(images, labels, 30, settings, seed=2, class_names=NAMES)
    assert not torch.equal(a.masks, c.masks)


def test_held_out_canvases_use_test_images_only_and_are_cached(tmp_path: Path, monkeypatch) -> None:
    train_images, train_labels = _items(40, 100)
    test_images, test_labels = _items(20, 250, seed=1)
    settings = SegSettings(train_canvases=12, test_canvases=6)
    tr, te = canvas_sets(train_images, train_labels, test_images, test_labels, NAMES, settings, 0, tmp_path)
    assert set(torch.unique(tr.images).tolist()) == {0, 100}
    assert set(torch.unique(te.images).tolist()) == {0, 250}
    assert len(tr) == 12 and len(te) == 6
    assert len(list(tmp_path.glob("seg-canvases-*.npz"))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(seg, "make_canvases", no_build)
    tr2, te2 = canvas_sets(train_images, train_labels, test_images, test_labels, NAMES, settings, 0, tmp_path)
    assert torch.equal(tr.masks, tr2.masks) and torch.equal(te.images, te2.images)
    monkeypatch.undo()
    # a probe setting is not part of the key; a canvas setting or another seed is
    canvas_sets(
        train_images,
        train_labels,
        test_images,
        test_labels,
        NAMES,
        SegSettings(train_canvases=12, test_canvases=6, epochs=3),
        0,
        tmp_path,
    )
    other = SegSettings(train_canvases=12, test_canvases=6, jitter=0)
    canvas_sets(train_images, train_labels, test_images, test_labels, NAMES, other, 0, tmp_path)
    canvas_sets(train_images, train_labels, test_images, test_labels, NAMES, settings, 1, tmp_path)
    assert len(list(tmp_path.glob("seg-canvases-*.npz"))) == 3


def test_vit_tokens_on_a_larger_canvas_follow_the_patch_grid() -> None:
    torch.manual_seed(0)
    enc = MaskedEncoder(build_vit(28, 7, 16, 1, 2, in_chans=1)).eval()
    images = torch.randint(0, 256, (3, 1, 56, 56), dtype=torch.uint8)
    tokens = vit_patch_tokens(enc, images, (0.3,), (0.4,), patch_size=7, batch_size=2)
    assert tokens.shape == (3, 16, 8, 8)
    with torch.no_grad():
        _, patches = enc((images.float() / 255 - 0.3) / 0.4)
    torch.testing.assert_close(tokens[:, :, 2, 5], patches[:, 2 * 8 + 5], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        vit_patch_tokens(enc, images[:, :, :50, :50], (0.3,), (0.4,), patch_size=7)
    pix = pixel_patch_tokens(images, 7)
    assert pix.shape == (3, 49, 8, 8)
    torch.testing.assert_close(pix[1, :, 3, 4], images[1, 0, 21:28, 28:35].flatten().float() / 255)


def test_probe_scores_informative_tokens_high_and_constant_tokens_low() -> None:
    gen = torch.Generator().manual_seed(0)
    grid = torch.randint(0, 3, (64, 4, 4), generator=gen)  # one label per 7x7 patch
    masks = grid.repeat_interleave(7, dim=1).repeat_interleave(7, dim=2).to(torch.uint8)
    informative = torch.nn.functional.one_hot(grid, 3).permute(0, 3, 1, 2).float()
    informative = informative + 0.05 * torch.randn(informative.shape, generator=gen)
    settings = SegSettings(epochs=30, batch_size=16, lr=5e-2)
    good = seg_probe(informative[:48], masks[:48], informative[48:], masks[48:], 3, settings, 0)
    assert good["pixel_acc"] > 85.0 and good["miou"] > 70.0
    const = torch.ones(64, 3, 4, 4)
    bad = seg_probe(const[:48], masks[:48], const[48:], masks[48:], 3, settings, 0)
    assert bad["miou"] < 30.0
    assert good == seg_probe(informative[:48], masks[:48], informative[48:], masks[48:], 3, settings, 0)


def test_segmentation_scores_hand_example() -> None:
    # truth rows, prediction columns; class 2 never occurs and is never predicted: left out.
    confusion = torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 0]])
    scores = segmentation_scores(confusion, ("bg", "a", "b"))
    # IoU bg = 5 / (5 + 2 + 1) = 62.5 %, IoU a = 2 / (2 + 1 + 2) = 40 %; pixel acc = 7 / 10.
    assert scores["iou"] == pytest.approx({"bg": 62.5, "a": 40.0})
    assert scores["miou"] == pytest.approx(51.25) and scores["pixel_acc"] == pytest.approx(70.0)


def _write_folder(root: Path, split: str, n: int, size: int = 14) -> None:
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[2:8, 2:8] = 1 + i % 2
        mask[0, :] = IGNORE
        Image.fromarray(np.stack([mask * 60] * 3, axis=-1)).save(root / split / "images" / f"im{i}.jpg")
        Image.fromarray(mask).save(root / split / "masks" / f"im{i}.png")


def test_mask_folder_layout(tmp_path: Path) -> None:
    _write_folder(tmp_path, "train", 4)
    _write_folder(tmp_path, "val", 2)
    (tmp_path / "classes.txt").write_text("background\nsquare\nother\n")
    train = load_mask_folder(tmp_path, "train", channels=1)
    assert train.images.shape == (4, 1, 14, 14) and train.masks.shape == (4, 14, 14)
    assert train.class_names == ("background", "square", "other")
    assert int(train.masks[1, 3, 3]) == 2 and int(train.masks[0, 0, 5]) == IGNORE
    test = load_mask_folder(tmp_path, "test", channels=3, image_size=7)
    assert test.images.shape == (2, 3, 7, 7) and test.masks.shape == (2, 7, 7)
    (tmp_path / "val" / "masks" / "im1.png").unlink()
    with pytest.raises(FileNotFoundError, match="no masks"):
        load_mask_folder(tmp_path, "test", channels=1)
