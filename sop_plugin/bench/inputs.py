"""The benchmark's data: both splits of ``data``, checked against the training and evaluation settings.

Training (:mod:`sop_plugin.bench.train`) and evaluation (:mod:`sop_plugin.bench.evals`) both read it.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from sop_plugin.bench.checks import ConfigError
from sop_plugin.bench.settings import BenchSettings
from sop_plugin.data import ArrayDataset, get_dataset


class IndexedImages(Dataset):
    """(uint8 image, label, index) triples over in-memory tensors."""

    def __init__(self, data: ArrayDataset) -> None:
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[i], self.labels[i], i


def load_data(settings: BenchSettings) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test split of ``data``; errors name the ``data.*`` setting to fix."""
    d = settings.data
    options = {k: v for k, v in d.items() if k not in ("name", "path", "download")}
    try:
        train = get_dataset(d["name"], d["path"], "train", bool(d["download"]), **options)
        test = get_dataset(d["name"], d["path"], "test", bool(d["download"]), **options)
    except OSError as err:
        raise ConfigError(
            f"cannot read data.path={d['path']} ({err}): fix the path or its permissions"
        ) from err
    except ValueError as err:
        if type(err) is not ValueError:
            raise  # DatasetNotFoundError / DatasetCorruptError: already name data.path and the fix
        raise ConfigError(f"data ({d['name']}): {err}") from err
    e = settings.eval
    holdout = e.holdout
    if holdout:  # tuning: the last N training images stand in for the test set, which stays unseen
        if not 0 < int(holdout) < len(train):
            raise ConfigError(f"eval.holdout={holdout} must be in [1, {len(train) - 1}] (training images)")
        test = train.subset(torch.arange(len(train) - int(holdout), len(train)))
        train = train.subset(torch.arange(len(train) - int(holdout)))
    limit = settings.train.limit_train_images
    if limit:
        train = train.subset(torch.arange(min(limit, len(train))))
    global_batch = settings.global_batch
    if global_batch > len(train):
        raise ConfigError(
            f"train.batch_size x devices = {global_batch} exceeds the {len(train)} training images: "
            "lower train.batch_size"
        )
    n_knn = min(len(train), e.epoch_train_subset)  # the kNN before training always runs on the subset
    if not 1 <= e.knn_k <= n_knn:
        raise ConfigError(
            f"eval.knn_k={e.knn_k} must be in [1, {n_knn}] (training images used by the kNN): "
            f"lower eval.knn_k or raise eval.epoch_train_subset"
        )
    return train, test


def first(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of ``x`` (all of them when it has fewer)."""
    return x[: min(n, x.shape[0])]
