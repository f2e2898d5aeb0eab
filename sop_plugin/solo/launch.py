"""``sop-solo-pretrain`` and ``sop-solo-linear``: solo-learn's launchers with SOP registered.

solo-learn's ``main_pretrain.py`` and ``main_linear.py`` live in its repository root, not
in its package, so we ship our own equivalents. They take the same hydra command line::

    sop-solo-pretrain --config-path scripts/pretrain/cifar --config-name sop.yaml key=value ++new=value
    sop-solo-linear --config-path scripts/linear/cifar --config-name sop.yaml \\
        "pretrained_feature_extractor='trained_models/sop/<run>/<name>-ep=99.ckpt'"

and run any method of ``solo.methods.METHODS`` (DINO, BYOL, ... and now SOP) with
solo-learn's config parsing, datasets, augmentations, checkpointer, auto-resume and
wandb logging. Differences from solo-learn's scripts, all opt-in or fixes:

* ``devices`` may be an int (``devices=1`` for CPU runs): solo-learn's parse_cfg needs a
  list, Lightning's CPU accelerator an int.
* nothing is downloaded unless ``++data.download=True`` (solo-learn downloads
  CIFAR/STL by default).
* ``custom`` image folders are evaluated at the training crop size (the first
  augmentation's ``crop_size``, its ``mean``/``std``) instead of a fixed 224; for
  linear evaluation, at ``data.augmentations.crop_size``. 224 keeps solo-learn's pipeline.
* SOP runs under DDP without re-broadcasting buffers every step: its memories are
  all-gathered, hence identical on every rank, and tens of MB large.
* checkpoints are written atomically (temporary file + rename) and read with torch's safe
  unpickler, for resuming as for linear evaluation; ``++trust_checkpoint=True`` allows
  other pickled types (with a warning). The pretrained checkpoint must contain every
  backbone weight (solo-learn silently ignores missing ones).
* checkpoints carry the global RNG states, so that auto-resume continues the data order
  and augmentations where the interrupted run stopped (exact resume, see
  ``docs/reliability.md``).
* before training, configs that solo-learn would fail on late are refused with the fix
  (:mod:`sop_plugin.solo.checks`: DINO's warm-up longer than the run, ``limit_val_batches`` that
  leaves the online kNN classes short); a run that trains nothing (auto-resume of a finished run)
  says so on stderr.
* ``csv.enabled``: Lightning's CSVLogger in ``<csv.dir>/<name>/`` (read by ``sop-solo-compare``);
  every epoch logs ``wall_time_s`` and prints its validation accuracies; ``clean_knn.enabled``:
  kNN on un-augmented features (:mod:`sop_plugin.solo.callbacks`).
* SIGTERM / SIGINT (a scheduler's preemption or time limit, Ctrl-C): training stops at the
  next batch end with an atomic checkpoint of that step in the Checkpointer's directory
  (``<name>-<version>-ep=E-step=N.ckpt``), one line on stderr names it with the command that
  resumes from it, and the process exits with 128 + the signal (143, 130). Before training
  (data and model setup) a signal stops at once. ``OMP_WAIT_POLICY=PASSIVE`` unless set
  (``sop_plugin.threads``).
"""

from __future__ import annotations

import inspect
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

import sop_plugin.solo  # noqa: F401  (registers METHODS["sop"]; clear ImportError without solo-learn)
from sop_plugin.runtime import AtomicCheckpointIO, RNGStateCheckpoint, load_checkpoint, num_devices
from sop_plugin.runtime.interrupt import InterruptCallback, Interrupted, SignalCatcher, hydra_value
from sop_plugin.solo.callbacks import NothingTrained, WallClock, clean_knn_from_cfg
from sop_plugin.solo.checks import preflight

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------- helpers


def _dali_kwargs(cfg: Any) -> dict[str, Any]:
    """The DALI data-module arguments pretraining and linear evaluation share."""
    d = cfg.data
    return {"dataset": d.dataset, "train_data_path": d.train_path, "num_workers": d.num_workers,
            "batch_size": cfg.optimizer.batch_size, "data_fraction": d.fraction, "dali_device": cfg.dali.device}  # fmt: skip


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    from solo.utils.misc import omegaconf_select

    return omegaconf_select(cfg, key, default)


def trust_checkpoint(cfg: DictConfig) -> bool:
    """``++trust_checkpoint=True``: load checkpoints holding arbitrary pickled objects (runs their code)."""
    value = _select(cfg, "trust_checkpoint", False)
    if not isinstance(value, bool):
        raise ValueError(f"trust_checkpoint={value!r} must be True or False")
    return value


def parse_with_devices(parse_fn: Callable[[DictConfig], DictConfig], cfg: DictConfig) -> DictConfig:
    """Run solo-learn's ``parse_fn`` (which needs ``len(cfg.devices)``) with any ``devices``."""
    OmegaConf.set_struct(cfg, False)
    devices = _select(cfg, "devices", 1)
    if not isinstance(devices, ListConfig):
        cfg.devices = list(range(num_devices(devices)))
    cfg = parse_fn(cfg)
    cfg.devices = devices
    return cfg


def _image_folder_loaders(
    train_path: str | Path,
    val_path: str | Path,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    num_workers: int,
):
    """Train/val loaders over ImageFolders at ``crop_size`` (solo-learn's loader settings)."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    normalize = transforms.Normalize(mean=list(mean), std=list(std))
    bicubic = transforms.InterpolationMode.BICUBIC
    t_train = transforms.Compose(
        [
            transforms.RandomResizedCrop(crop_size, scale=(0.08, 1.0), interpolation=bicubic),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    t_val = transforms.Compose(
        [
            transforms.Resize(crop_size, interpolation=bicubic),
            transforms.CenterCrop(crop_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    common = {"batch_size": batch_size, "num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    train = DataLoader(ImageFolder(str(train_path), t_train), shuffle=True, drop_last=True, **common)
    return train, DataLoader(ImageFolder(str(val_path), t_val), drop_last=False, **common)


def _classification_loaders(cfg: DictConfig, crop_size: int, mean, std, auto_augment: bool = False):
    """solo-learn's classification loaders, or ours for ``custom`` folders not at 224."""
    from solo.data.classification_dataloader import prepare_data

    data_format = "image_folder" if cfg.data.format == "dali" else cfg.data.format
    if cfg.data.dataset == "custom" and int(crop_size) != 224 and data_format == "image_folder":
        if auto_augment:
            raise ValueError("auto_augment is only supported at crop size 224 for custom datasets")
        return _image_folder_loaders(
            cfg.data.train_path,
            cfg.data.val_path,
            int(crop_size),
            mean,
            std,
            cfg.optimizer.batch_size,
            cfg.data.num_workers,
        )
    return prepare_data(
        cfg.data.dataset,
        train_data_path=cfg.data.train_path,
        val_data_path=cfg.data.val_path,
        data_format=data_format,
        batch_size=cfg.optimizer.batch_size,
        num_workers=cfg.data.num_workers,
        download=bool(_select(cfg, "data.download", False)),
        auto_augment=auto_augment,
    )


def _resume(cfg: DictConfig, checkpoint_dir: str) -> tuple[str | None, str | None]:
    """(checkpoint to resume from, wandb run id) from auto-resume or ``resume_from_checkpoint``."""
    from solo.utils.auto_resumer import AutoResumer

    ckpt_path, wandb_run_id = None, None
    if cfg.auto_resume.enabled and cfg.resume_from_checkpoint is None:
        resumer = AutoResumer(checkpoint_dir=checkpoint_dir, max_hours=cfg.auto_resume.max_hours)
        found, wandb_run_id = resumer.find_checkpoint(cfg)
        if found is not None:
            print(f"Resuming from previous checkpoint that matches specifications: '{found}'")
            ckpt_path = str(found)
    elif cfg.resume_from_checkpoint is not None:
        ckpt_path = str(cfg.resume_from_checkpoint)
        del cfg.resume_from_checkpoint
    return ckpt_path, wandb_run_id


def _callbacks_and_logger(cfg: DictConfig, model, logdir: str, wandb_run_id: str | None):
    from lightning.pytorch.callbacks import LearningRateMonitor
    from solo.utils.checkpointer import Checkpointer

    callbacks: list[Any] = [RNGStateCheckpoint(), WallClock(), NothingTrained()]
    if cfg.checkpoint.enabled:
        callbacks.append(
            Checkpointer(cfg, logdir=logdir, frequency=cfg.checkpoint.frequency, keep_prev=cfg.checkpoint.keep_prev)
        )
    logger = None
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(
            name=cfg.name,
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            offline=cfg.wandb.offline,
            resume="allow" if wandb_run_id else None,
            id=wandb_run_id,
        )
        logger.watch(model, log="gradients", log_freq=100)
        logger.log_hyperparams(OmegaConf.to_container(cfg))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if _select(cfg, "csv.enabled", False) and _select(cfg, "logger", None) is not False:
        from lightning.pytorch.loggers import CSVLogger

        csv_logger = CSVLogger(save_dir=str(cfg.csv.dir), name=str(cfg.name))
        logger = csv_logger if logger is None else [logger, csv_logger]
    return callbacks, logger


def _interrupt_callback(cfg: DictConfig, catcher: SignalCatcher, logdir: str) -> InterruptCallback:
    """Stops training at the next batch end after SIGTERM/SIGINT, with a checkpoint of that step.

    The checkpoint goes where solo-learn's Checkpointer writes (``<name>-<version>-ep=E-step=N.ckpt``),
    or to ``<logdir>/interrupted/`` without one. With ``checkpoint.keep_prev=False`` it replaces
    the Checkpointer's previous file, as the next epoch's would, so that solo-learn's auto-resume
    (which takes the first ``.ckpt`` it lists in a run's directory) finds it.
    """
    from solo.utils.checkpointer import Checkpointer

    def checkpointer(trainer) -> Any:
        found = [cb for cb in trainer.callbacks if isinstance(cb, Checkpointer) and getattr(cb, "path", None)]
        return found[0] if found else None

    def path(trainer) -> Path:
        where = f"{trainer.current_epoch}-step={trainer.global_step}"
        ckpt = checkpointer(trainer)
        if ckpt is not None:
            return Path(ckpt.path) / ckpt.ckpt_placeholder.format(where)
        return Path(logdir) / "interrupted" / f"{cfg.name}-ep={where}.ckpt"

    def saved(trainer, path: Path) -> None:
        ckpt = checkpointer(trainer)
        if ckpt is None:
            return
        previous = getattr(ckpt, "last_ckpt", None)
        if trainer.is_global_zero and previous and Path(previous) != path and not ckpt.keep_prev:
            Path(previous).unlink(missing_ok=True)
        ckpt.last_ckpt = path

    return InterruptCallback(catcher, path, method=str(cfg.method) if "method" in cfg else None, on_saved=saved)


def _trainer(cfg: DictConfig, callbacks: list[Any], logger: Any, broadcast_buffers: bool = True):
    """A Lightning Trainer from the cfg keys that are Trainer arguments (as solo-learn)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies.ddp import DDPStrategy

    values = OmegaConf.to_container(cfg)
    valid = inspect.signature(Trainer.__init__).parameters
    kwargs = {name: values[name] for name in valid if name in values}
    strategy = cfg.strategy
    if strategy == "ddp":
        strategy = DDPStrategy(find_unused_parameters=False, broadcast_buffers=broadcast_buffers)
    elif strategy is None:
        strategy = "auto"
    if logger is None:  # as solo-learn: Lightning's default logger, unless the cfg says logger=False
        logger = kwargs.get("logger", None)
    kwargs.update(
        {
            "logger": logger,
            "callbacks": callbacks,
            "enable_checkpointing": False,
            "strategy": strategy,
            "plugins": [*(kwargs.get("plugins") or []), AtomicCheckpointIO(trust_checkpoint(cfg))],
        }
    )
    return Trainer(**kwargs)


# ---------------------------------------------------------------------- pretraining
def run_pretrain(cfg: DictConfig, catcher: SignalCatcher | None = None):
    """Pretrain ``cfg.method`` like solo-learn's main_pretrain.py; returns the Trainer.

    ``catcher``: the installed :class:`SignalCatcher` of the command line (SIGTERM/SIGINT then
    raise :class:`Interrupted` after a checkpoint of the current step); None: no signal handling.
    """
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
    from solo.utils.misc import make_contiguous

    cfg = parse_with_devices(parse_cfg, cfg)
    preflight(cfg)
    seed_everything(cfg.seed)

    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHODS)}")
    if cfg.data.num_large_crops != 2 and cfg.method not in ("wmse", "mae"):
        raise ValueError(f"{cfg.method} needs 2 large crops, the augmentations give {cfg.data.num_large_crops}")

    model = METHODS[cfg.method](cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)

    val_loader = None
    if cfg.data.dataset == "custom" and (cfg.data.no_labels or cfg.data.val_path is None):
        pass  # nothing labelled to validate on
    elif cfg.data.dataset in ("imagenet", "imagenet100") and cfg.data.val_path is None:
        pass
    else:
        first = cfg.augmentations[0]
        _, val_loader = _classification_loaders(
            cfg, first.crop_size, first.get("mean", _IMAGENET_MEAN), first.get("std", _IMAGENET_STD)
        )

    fit_kwargs: dict[str, Any] = {}
    if cfg.data.format == "dali":
        try:
            from solo.data.dali_dataloader import PretrainDALIDataModule, build_transform_pipeline_dali
        except ImportError as exc:
            raise ImportError("data.format=dali needs NVIDIA DALI (solo-learn's [dali] extra)") from exc
        transform = FullTransformPipeline(
            [
                NCropAugmentation(
                    build_transform_pipeline_dali(cfg.data.dataset, aug, dali_device=cfg.dali.device), aug.num_crops
                )
                for aug in cfg.augmentations
            ]
        )
        datamodule = PretrainDALIDataModule(
            transforms=transform,
            num_large_crops=cfg.data.num_large_crops,
            num_small_crops=cfg.data.num_small_crops,
            no_labels=cfg.data.no_labels,
            encode_indexes_into_labels=cfg.dali.encode_indexes_into_labels,
            **_dali_kwargs(cfg),
        )
        datamodule.val_dataloader = lambda: val_loader
        fit_kwargs["datamodule"] = datamodule
    else:
        transform = FullTransformPipeline(
            [
                NCropAugmentation(build_transform_pipeline(cfg.data.dataset, aug), aug.num_crops)
                for aug in cfg.augmentations
            ]
        )
        if cfg.debug_augmentations:
            print("Transforms:")
            print(transform)
        train_dataset = prepare_datasets(
            cfg.data.dataset,
            transform,
            train_data_path=cfg.data.train_path,
            data_format=cfg.data.format,
            no_labels=cfg.data.no_labels,
            download=bool(_select(cfg, "data.download", False)),
            data_fraction=cfg.data.fraction,
        )
        train_loader = prepare_dataloader(
            train_dataset, batch_size=cfg.optimizer.batch_size, num_workers=cfg.data.num_workers
        )
        fit_kwargs.update({"train_dataloaders": train_loader, "val_dataloaders": val_loader})

    logdir = os.path.join(cfg.checkpoint.dir, cfg.method)
    ckpt_path, wandb_run_id = _resume(cfg, logdir)
    callbacks, logger = _callbacks_and_logger(cfg, model, logdir, wandb_run_id)
    callbacks += [cb for cb in [clean_knn_from_cfg(cfg, val_loader)] if cb is not None]
    if _select(cfg, "auto_umap.enabled", False):
        from solo.utils.auto_umap import AutoUMAP

        callbacks.append(
            AutoUMAP(cfg.name, logdir=os.path.join(cfg.auto_umap.dir, cfg.method), frequency=cfg.auto_umap.frequency)
        )
    if catcher is not None:
        callbacks.append(_interrupt_callback(cfg, catcher, logdir))
    trainer = _trainer(cfg, callbacks, logger, broadcast_buffers=cfg.method != "sop")
    trainer.fit(model, ckpt_path=ckpt_path, **fit_kwargs)
    return trainer


# ---------------------------------------------------------------------- linear evaluation
def load_backbone_weights(backbone: torch.nn.Module, ckpt_path: str | Path, trusted: bool = False) -> None:
    """Load the ``backbone.*`` weights of a solo-learn (or SOP) checkpoint into ``backbone``.

    The file is read with torch's safe unpickler (:func:`sop_plugin.runtime.load_checkpoint`);
    ``trusted`` (``++trust_checkpoint=True``) allows other pickled types, with a warning.
    """
    path = str(ckpt_path)
    if not path.endswith((".ckpt", ".pth", ".pt")):
        raise ValueError(f"pretrained_feature_extractor={path!r} must be a .ckpt, .pth or .pt file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_feature_extractor {path!r} does not exist")
    state = load_checkpoint(path, trust_checkpoint=trusted)
    state = state.get("state_dict", state)
    weights = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    if not weights:  # checkpoints of old solo-learn versions called the backbone "encoder"
        weights = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    if not weights:
        raise ValueError(f"{path} holds no 'backbone.*' weights: is it a pretraining checkpoint?")
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing:
        raise ValueError(
            f"{path} does not fit the configured backbone: missing {sorted(missing)[:8]} "
            "(check backbone.name and backbone.kwargs against the pretraining config)"
        )
    if unexpected:
        log.warning("ignoring checkpoint weights the backbone has no place for: %s", sorted(unexpected)[:8])
    log.info("Loaded %s", path)


def run_linear(cfg: DictConfig, catcher: SignalCatcher | None = None):
    """Linear evaluation like solo-learn's main_linear.py; returns the Trainer (``catcher``: see run_pretrain)."""
    import torch.nn as nn
    from solo.args.linear import parse_cfg
    from solo.methods.base import BaseMethod
    from solo.methods.linear import LinearModel
    from solo.utils.misc import make_contiguous
    from timm.data.mixup import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    cfg = parse_with_devices(parse_cfg, cfg)

    backbone = BaseMethod._BACKBONES[cfg.backbone.name](method=cfg.pretrain_method, **cfg.backbone.kwargs)
    if cfg.backbone.name.startswith("resnet"):
        backbone.fc = nn.Identity()
        if cfg.data.dataset in ("cifar10", "cifar100"):
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            backbone.maxpool = nn.Identity()
    if cfg.pretrained_feature_extractor is None:
        raise ValueError("set pretrained_feature_extractor to the pretraining checkpoint (.ckpt)")
    load_backbone_weights(backbone, cfg.pretrained_feature_extractor, trusted=trust_checkpoint(cfg))

    mixup_func = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup_func = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            cutmix_minmax=None,
            prob=1.0,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=cfg.label_smoothing,
            num_classes=cfg.data.num_classes,
        )
        loss_func = SoftTargetCrossEntropy()
    elif cfg.label_smoothing > 0:
        loss_func = LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    else:
        loss_func = nn.CrossEntropyLoss()

    model = LinearModel(backbone, loss_func=loss_func, mixup_func=mixup_func, cfg=cfg)
    make_contiguous(model)
    if not cfg.performance.disable_channel_last:
        model = model.to(memory_format=torch.channels_last)

    aug = cfg.data.augmentations
    train_loader, val_loader = _classification_loaders(
        cfg, aug.crop_size, aug.mean, aug.std, auto_augment=cfg.auto_augment
    )
    fit_kwargs: dict[str, Any] = {"train_dataloaders": train_loader, "val_dataloaders": val_loader}
    if cfg.data.format == "dali":
        try:
            from solo.data.dali_dataloader import ClassificationDALIDataModule
        except ImportError as exc:
            raise ImportError("data.format=dali needs NVIDIA DALI (solo-learn's [dali] extra)") from exc
        if cfg.auto_augment:
            raise ValueError("auto_augment is not supported with DALI")
        datamodule = ClassificationDALIDataModule(val_data_path=cfg.data.val_path, **_dali_kwargs(cfg))
        datamodule.val_dataloader = lambda: val_loader
        fit_kwargs = {"datamodule": datamodule}

    logdir = os.path.join(cfg.checkpoint.dir, "linear")
    ckpt_path, wandb_run_id = _resume(cfg, logdir)
    callbacks, logger = _callbacks_and_logger(cfg, model, logdir, wandb_run_id)
    if catcher is not None:
        callbacks.append(_interrupt_callback(cfg, catcher, logdir))
    trainer = _trainer(cfg, callbacks, logger)
    trainer.fit(model, ckpt_path=ckpt_path, **fit_kwargs)
    return trainer


# ---------------------------------------------------------------------- entry points
def absolute_config_path(argv: list[str]) -> list[str]:
    """``argv`` with ``--config-path``/``-cp`` made absolute (hydra resolves relative ones
    against this file's folder; solo-learn's scripts against the working directory)."""
    out = list(argv)
    for i, arg in enumerate(out):
        for flag in ("--config-path", "-cp"):
            if arg == flag and i + 1 < len(out):
                out[i + 1] = os.path.abspath(out[i + 1])
            elif arg.startswith(flag + "="):
                out[i] = f"{flag}={os.path.abspath(arg.split('=', 1)[1])}"
    return out


def resume_command(prog: str, argv: list[str], checkpoint: Path) -> str:
    """``argv`` as ``prog``'s command line, resuming from ``checkpoint`` (``++resume_from_checkpoint``)."""
    args = [a for a in argv[1:] if not a.lstrip("+~").startswith("resume_from_checkpoint=")]
    resume = f"++resume_from_checkpoint={hydra_value(str(checkpoint))}"
    return " ".join([prog, *(shlex.quote(a) for a in args), shlex.quote(resume)])


def interrupted_message(prog: str, stop: Interrupted, argv: list[str]) -> str:
    """The one line printed when a signal stopped the run."""
    if stop.checkpoint is None:
        return f"{prog}: {stop.describe()}; no checkpoint yet: run the same command again to start over"
    return f"{prog}: {stop.describe()}; checkpoint {stop.checkpoint}; resume with: " + resume_command(
        prog, argv, stop.checkpoint
    )


#: exit status of a launch that ended without a single optimisation step (e.g. auto-resumed a finished run)
EXIT_NOTHING_TRAINED = 4


def _run_cli(prog: str, run: Callable[[DictConfig, SignalCatcher], Any], cfg: DictConfig) -> None:
    """``run(cfg, catcher)`` under SIGTERM/SIGINT handling: message and exit status 128 + signal."""
    with SignalCatcher(prog=prog) as catcher:
        try:
            catcher.set_immediate("setup")  # until the Trainer sets up: nothing to save yet
            trainer = run(cfg, catcher)
        except Interrupted as stop:
            if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
                print(interrupted_message(prog, stop, sys.argv), file=sys.stderr, flush=True)
            sys.exit(stop.exit_code)
    if any(getattr(cb, "trained_nothing", False) for cb in getattr(trainer, "callbacks", [])):
        sys.exit(EXIT_NOTHING_TRAINED)  # the warning above says why; a run that trained nothing is no success


@hydra.main(version_base="1.2", config_path=None, config_name=None)
def _pretrain_hydra(cfg: DictConfig) -> None:
    OmegaConf.set_struct(cfg, False)
    _run_cli("sop-solo-pretrain", run_pretrain, cfg)


@hydra.main(version_base="1.2", config_path=None, config_name=None)
def _linear_hydra(cfg: DictConfig) -> None:
    OmegaConf.set_struct(cfg, False)
    _run_cli("sop-solo-linear", run_linear, cfg)


def pretrain_main() -> None:
    """``sop-solo-pretrain --config-path DIR --config-name NAME.yaml [key=value ...]``."""
    sys.argv = absolute_config_path(sys.argv)
    _pretrain_hydra()


def linear_main() -> None:
    """``sop-solo-linear --config-path DIR --config-name NAME.yaml [key=value ...]``."""
    sys.argv = absolute_config_path(sys.argv)
    _linear_hydra()


if __name__ == "__main__":  # python -m sop_plugin.solo.launch behaves as sop-solo-pretrain
    pretrain_main()
