"""A new user's first CPU run: each known solo-learn failure is stopped before training with its fix,
the clean kNN, the wall clock, and a loud message when a run trains nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch
from torch.utils.data import DataLoader, TensorDataset

from sop_plugin.solo.callbacks import CleanKNN, NothingTrained, knn_accuracy
from sop_plugin.solo.checks import dino_warmup_problem, limited_val_problem, preflight
from tests.solo.soloutil import SCRIPTS, compose, data_overrides

FMNIST = SCRIPTS / "pretrain" / "fashion-mnist"


def test_dino_warm_up_longer_than_the_run_is_refused_with_the_fix():
    cfg = compose(FMNIST, "dino.yaml", ["max_epochs=3"])
    message = dino_warmup_problem(cfg)
    assert "warmup_teacher_temperature_epochs=10 > max_epochs=3" in message
    assert "Set method_kwargs.warmup_teacher_temperature_epochs=3" in message
    assert dino_warmup_problem(compose(FMNIST, "dino.yaml", ["max_epochs=10"])) is None
    assert dino_warmup_problem(compose(FMNIST, "sop.yaml", ["max_epochs=3"])) is None  # SOP warms up per step


def test_limit_val_batches_on_a_class_sorted_folder_is_refused(tiny_image_folder: Path):
    # 5 classes x 1 val image, batch 2: two batches hold 4 of 5 classes
    base = [*data_overrides(tiny_image_folder), "optimizer.batch_size=2", "knn_eval.enabled=True"]
    cfg = compose(FMNIST, "sop.yaml", [*base, "++limit_val_batches=2"])
    expected = r"hold 4 of its 5 classes.*sop-data export fashion-mnist DIR --limit"
    with pytest.raises(ValueError, match=expected):
        preflight(cfg)
    assert limited_val_problem(compose(FMNIST, "sop.yaml", [*base, "++limit_val_batches=3"])) is None
    no_knn = [*base, "++limit_val_batches=2", "knn_eval.enabled=False"]
    assert limited_val_problem(compose(FMNIST, "sop.yaml", no_knn)) is None
    preflight(compose(FMNIST, "sop.yaml", base))


def test_knn_accuracy_weights_votes_and_counts_classes_from_both_sides():
    normalize = torch.nn.functional.normalize
    bank = normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    bank_y = torch.tensor([0, 0, 3, 3])
    queries = normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    assert knn_accuracy(bank, bank_y, queries, torch.tensor([0, 3]), k=3, temperature=0.07) == 100.0
    # one validation class only (a class-sorted, limited val folder): still scored, no index error
    assert knn_accuracy(bank, bank_y, queries[:1], torch.tensor([0]), k=20, temperature=0.07) == 100.0


def test_clean_knn_scores_a_backbone_on_unaugmented_images():
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 5
    train_x = centres.repeat_interleave(10, 0) + torch.randn(40, 8) * 0.1
    val_x = centres + torch.randn(4, 8) * 0.1
    labels = torch.arange(4)
    knn = CleanKNN(
        DataLoader(TensorDataset(train_x, labels.repeat_interleave(10)), batch_size=16),
        DataLoader(TensorDataset(val_x, labels), batch_size=3),
        k=5,
    )
    backbone = torch.nn.Identity().train()
    assert knn.score(backbone, torch.device("cpu")) == 100.0 and backbone.training
    with pytest.raises(ValueError, match="clean_knn"):
        CleanKNN(None, None, k=0)


def test_a_run_that_trains_nothing_says_so(capsys):
    class _Trainer:
        global_step = 12

    cb = NothingTrained()
    cb.on_fit_start(_Trainer(), None)  # resumed at max_epochs: Lightning skips on_train_start
    cb.on_fit_end(_Trainer(), None)
    assert "this run trained nothing" in capsys.readouterr().err and cb.trained_nothing
    cb.on_fit_start(_Trainer(), None)
    cb.on_train_start(_Trainer(), None)
    trained = _Trainer()
    trained.global_step = 20
    cb.on_fit_end(trained, None)
    assert capsys.readouterr().err == "" and not cb.trained_nothing


def test_a_launch_that_trains_nothing_exits_non_zero() -> None:
    from sop_plugin.solo.launch import EXIT_NOTHING_TRAINED, _run_cli

    cb = NothingTrained()
    cb.trained_nothing = True

    class _Trainer:
        callbacks = [cb]

    with pytest.raises(SystemExit) as exit_info:
        _run_cli("sop-solo-pretrain", lambda cfg, catcher: _Trainer(), None)  # type: ignore[arg-type]
    assert exit_info.value.code == EXIT_NOTHING_TRAINED != 0
    cb.trained_nothing = False  # trained: returns
    _run_cli("sop-solo-pretrain", lambda cfg, catcher: _Trainer(), None)  # type: ignore[arg-type]
