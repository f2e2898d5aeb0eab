"""Our own small launcher, for a solo-learn install without a clone of its repository (no scripts).

:func:`own_pretrain` and :func:`own_linear` assemble solo-learn's building blocks for the plain
case (PyTorch loaders, solo-learn's Checkpointer and auto-resume), inside an
:class:`~sop_plugin.solo.attach.Attachment` like solo-learn's own scripts. Options that only
solo-learn's scripts implement (DALI, wandb, AutoUMAP, mixup/cutmix) are refused with the fix.
"""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf
from solo.utils.misc import omegaconf_select

from sop_plugin.solo.attach import Attachment, PluginTrainer
from sop_plugin.solo.pretrained import load_backbone_weights
from sop_plugin.solo.solo_scripts import SCRIPTS, SOLO_ROOT_ENV


def _needs_solo_scripts(cfg: DictConfig, kind: str) -> None:
    """Refuse what only solo-learn's own scripts implement."""
    mixing = omegaconf_select(cfg, "mixup", 0) > 0 or omegaconf_select(cfg, "cutmix", 0) > 0
    wanted = {
        "data.format=dali": omegaconf_select(cfg, "data.format", None) == "dali",
        "wandb.enabled=True": bool(omegaconf_select(cfg, "wandb.enabled", False)),
        "auto_umap.enabled=True": bool(omegaconf_select(cfg, "auto_umap.enabled", False)),
        "mixup/cutmix": kind == "linear" and mixing,
    }
    used = [name for name, on in wanted.items() if on]
    if used:
        raise ValueError(
            f"{', '.join(used)}: only solo-learn's own {SCRIPTS[kind]} does this, and no solo-learn "
            f"clone was found; pass --solo-root DIR (a clone of vturrisi/solo-learn) or set "
            f"{SOLO_ROOT_ENV}=DIR"
        )


def _resume_from(cfg: DictConfig, logdir: str) -> str | None:
    """``resume_from_checkpoint`` if given, else what solo-learn's AutoResumer finds when enabled."""
    from solo.utils.auto_resumer import AutoResumer

    explicit = cfg.pop("resume_from_checkpoint", None)
    if explicit is not None or not cfg.auto_resume.enabled:
        return None if explicit is None else str(explicit)
    resumer = AutoResumer(checkpoint_dir=logdir, max_hours=cfg.auto_resume.max_hours)
    found, _ = resumer.find_checkpoint(cfg)
    if found is not None:
        print(f"Resuming from previous checkpoint that matches specifications: '{found}'")
    return None if found is None else str(found)


def _fit(cfg: DictConfig, logdir: str, model: Any, train: Any, val: Any) -> None:
    """One :class:`PluginTrainer` from the cfg keys that are Trainer arguments, with solo-learn's
    Checkpointer, fitting ``model`` on the ``train`` and ``val`` loaders."""
    from solo.utils.checkpointer import Checkpointer

    ckpt_path = _resume_from(cfg, logdir)
    params = inspect.signature(PluginTrainer.__init__).parameters
    args = {k: v for k, v in OmegaConf.to_container(cfg).items() if k in params}
    c = cfg.checkpoint
    saver = []
    if c.enabled:
        saver.append(Checkpointer(cfg, logdir=logdir, frequency=c.frequency, keep_prev=c.keep_prev))
    args.update(callbacks=saver, logger=None, enable_checkpointing=False)
    PluginTrainer(**args).fit(model, train, val, ckpt_path=ckpt_path)


def _labelled_val(d: DictConfig) -> bool:
    """Whether ``cfg.data`` has labelled validation images (custom folders and ImageNet only with a
    ``val_path``)."""
    if d.dataset == "custom":
        return not d.no_labels and d.val_path is not None
    return d.val_path is not None or d.dataset not in ("imagenet", "imagenet100")


def own_pretrain(cfg: DictConfig, attachment: Attachment) -> None:
    """Pretraining from solo-learn's parts (run inside ``attachment.attached()``: its hooks apply)."""
    from lightning.pytorch import seed_everything
    from solo.args.pretrain import parse_cfg
    from solo.data.pretrain_dataloader import (
        FullTransformPipeline,
        NCropAugmentation,
        build_transform_pipeline,
        prepare_dataloader,
        prepare_datasets,
    )
    from solo.methods import METHODS

    cfg = parse_cfg(cfg)
    _needs_solo_scripts(cfg, "pretrain")
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHODS)}")
    seed_everything(cfg.seed)
    model = METHODS[cfg.method](cfg)
    d = cfg.data
    pipelines = [(build_transform_pipeline(d.dataset, aug), aug.num_crops) for aug in cfg.augmentations]
    views = [NCropAugmentation(pipeline, crops) for pipeline, crops in pipelines]
    images = prepare_datasets(
        d.dataset,
        FullTransformPipeline(views),
        train_data_path=d.train_path,
        data_format=d.format,
        no_labels=d.no_labels,
        data_fraction=d.fraction,
    )
    train = prepare_dataloader(images, batch_size=cfg.optimizer.batch_size, num_workers=d.num_workers)
    val = None
    if _labelled_val(d):
        _, val = _classification_loaders(cfg)
    _fit(cfg, attachment.logdir, model, train, val)


def _classification_loaders(cfg: DictConfig, **extra: Any) -> tuple[Any, Any]:
    """solo-learn's labelled train/val loaders for ``cfg.data`` at the run's batch size."""
    from solo.data.classification_dataloader import prepare_data

    d = cfg.data
    return prepare_data(
        d.dataset,
        train_data_path=d.train_path,
        val_data_path=d.val_path,
        data_format=d.format,
        batch_size=cfg.optimizer.batch_size,
        num_workers=d.num_workers,
        **extra,
    )


def own_linear(cfg: DictConfig, attachment: Attachment) -> None:
    """Linear evaluation from solo-learn's parts (inside ``attachment.attached()``)."""
    import torch.nn as nn
    from solo.args.linear import parse_cfg
    from solo.methods.base import BaseMethod
    from solo.methods.linear import LinearModel

    cfg = parse_cfg(cfg)  # also reads the pretrained weights (attachment.weights)
    _needs_solo_scripts(cfg, "linear")
    build = BaseMethod._BACKBONES[cfg.backbone.name]
    backbone = build(method=cfg.pretrain_method, **cfg.backbone.kwargs)
    # as solo-learn's methods build it: no classifier, and CIFAR's stem
    if cfg.backbone.name.startswith("resnet"):
        backbone.fc = nn.Identity()
        if cfg.data.dataset in ("cifar10", "cifar100"):
            backbone.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=2, bias=False)
            backbone.maxpool = nn.Identity()
    load_backbone_weights(backbone, cfg.pretrained_feature_extractor, weights=attachment.weights)
    loss = nn.CrossEntropyLoss(label_smoothing=float(cfg.label_smoothing))
    model = LinearModel(backbone, loss_func=loss, mixup_func=None, cfg=cfg)
    train, val = _classification_loaders(cfg, auto_augment=cfg.auto_augment)
    _fit(cfg, attachment.logdir, model, train, val)
