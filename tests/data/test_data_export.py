"""Export to PNG folders, ImageFolder round trip, and the sop-data CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from sop_plugin.data import export_image_folder, get_dataset
from sop_plugin.data.cli import main


def test_round_trip_through_torchvision_image_folder(tmp_path: Path, make_dataset) -> None:
    train, test = make_dataset(n=12), make_dataset(n=5, split="test", seed=1)
    written = export_image_folder({"train": train, "test": test}, tmp_path)
    assert written == {"train": 12, "val": 5}
    folder = ImageFolder(str(tmp_path / "train"))
    assert sorted(folder.classes) == ["Bag", "T-shirt_top", "coat"]
    assert len(folder) == 12
    safe = {"T-shirt/top": "T-shirt_top", "Bag": "Bag", "coat": "coat"}
    seen = 0
    for path, target in folder.samples:
        index = int(Path(path).stem)
        assert folder.classes[target] == safe[train.class_names[int(train.labels[index])]]
        image, _ = folder[folder.samples.index((path, target))]
        assert torch.equal(torch.from_numpy(np.array(image)[:, :, 0]), train.images[index, 0])
        seen += 1
    assert seen == 12


def test_exported_folder_reloads_identically(tmp_path: Path, make_dataset) -> None:
    train, test = make_dataset(n=9, channels=3), make_dataset(n=4, channels=3, split="test", seed=2)
    export_image_folder({"train": train, "test": test}, tmp_path)
    back = get_dataset("image-folder", path=tmp_path, split="val")
    folders = [n.replace("/", "_") for n in test.class_names]
    rank = torch.tensor([sorted(folders).index(f) for f in folders])  # folders load in sorted order
    order = torch.argsort(rank[test.labels], stable=True)
    assert back.class_names == tuple(sorted(folders))
    assert [back.class_names[i] for i in back.labels] == [folders[i] for i in test.labels[order]]
    assert torch.equal(back.images, test.images[order])


def test_limit_and_overwrite_guard(tmp_path: Path, make_dataset) -> None:
    splits = {"train": make_dataset(n=10), "test": make_dataset(n=10, split="test")}
    assert export_image_folder(splits, tmp_path, limit=3) == {"train": 3, "val": 3}
    with pytest.raises(FileExistsError, match="overwrite"):
        export_image_folder(splits, tmp_path)
    assert export_image_folder(splits, tmp_path, limit=4, overwrite=True)["train"] == 4


def test_cli_export_list_info_and_errors(tmp_path: Path, idx_dir, capsys) -> None:
    path, _ = idx_dir
    out = tmp_path / "out"
    assert main(["export", "fashion-mnist", str(out), "--limit", "7", "--path", str(path)]) == 0
    assert len(list((out / "train").rglob("*.png"))) == 7 and len(list((out / "val").rglob("*.png"))) == 7
    assert (out / "train" / "T-shirt_top").is_dir()
    assert main(["list"]) == 0
    assert "fashion-mnist" in capsys.readouterr().out
    assert main(["info", "fashion-mnist", "--path", str(path), "--split", "test"]) == 0
    assert "10 images" in capsys.readouterr().out
    assert main(["info", "cifar10", "--path", str(tmp_path / "none")]) == 2
    assert "data.download=true" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
