"""``sop-solo-compare``: the table and the figure from three runs' CSV logs (no solo-learn needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sop_plugin.solo.compare import compare, main, read_run


def _write_run(root: Path, method: str, loss_key: str, knn: list[float], version: int = 0) -> Path:
    """A Lightning CSVLogger folder as solo-learn leaves it: step rows and epoch rows, sparse columns."""
    folder = root / method / "lightning_logs" / f"version_{version}"
    folder.mkdir(parents=True)
    (folder / "hparams.yaml").write_text(f"method: {method}\nname: {method}-x\n")
    losses = [f"{loss_key}_step", f"{loss_key}_epoch"]
    keys = ["epoch", "step", *losses, "val_knn_acc1", "val_acc1", "wall_time_s"]
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        for epoch, acc in enumerate(knn):
            writer.writerow({"epoch": epoch, "step": 4 * epoch + 3, f"{loss_key}_step": 5.0 - epoch})
            writer.writerow({"epoch": epoch, "step": 4 * epoch + 3, "val_knn_acc1": acc, "val_acc1": acc / 2})
            writer.writerow(
                {
                    "epoch": epoch,
                    "step": 4 * epoch + 3,
                    f"{loss_key}_epoch": 4.0 - epoch,
                    "wall_time_s": 2.0 * (epoch + 1),
                }
            )
    return root / method


def test_compare_writes_table_and_figure(tmp_path: Path, capsys):
    runs = [
        _write_run(tmp_path, "sop", "train_sop_loss", [10.0, 30.0, 25.0]),
        _write_run(tmp_path, "dino", "dino_loss", [12.0, 20.0]),
        _write_run(tmp_path, "ibot", "train_ibot_loss", [11.0, 22.0, 33.0]),
    ]
    run = read_run(runs[0])
    assert run.name == "sop" and run.epochs == 3 and run.steps == 12 and run.wall_s == 6.0
    assert run.best("val_knn_acc1") == 30.0 and run.last("val_knn_acc1") == 25.0
    assert run.loss_key() == "train_sop_loss_epoch"

    main([*map(str, runs), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| sop | 30.00 | 25.00 | 15.00 | 12.50 | 3 | 6 | 2 |" in table
    assert "| dino | 20.00 | 20.00 | 10.00 | 10.00 | 2 | 4 | 2 |" in table
    assert "| ibot | 33.00 | 33.00 |" in table
    png = (tmp_path / "out" / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_compare_reads_the_newest_log_and_names_missing_ones(tmp_path: Path):
    import os

    _write_run(tmp_path, "sop", "train_sop_loss", [10.0])
    newer = _write_run(tmp_path, "sop", "train_sop_loss", [50.0], version=1)
    os.utime(newer / "lightning_logs" / "version_1" / "metrics.csv", (2e9, 2e9))
    assert read_run(newer).best("val_knn_acc1") == 50.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metrics.csv below it"):
        compare([tmp_path / "empty"], tmp_path / "out")
