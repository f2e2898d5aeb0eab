"""What our launchers add to a solo-learn launch, whoever assembles it (solo-learn's script or ours).

solo-learn's ``main_pretrain.py`` / ``main_linear.py`` build everything from four names they import:
``parse_cfg``, ``prepare_data`` (the classification loaders), ``prepare_datasets`` (pretraining
data) and ``lightning.pytorch.Trainer``. :meth:`Attachment.attached` replaces those four module
attributes for the duration of one launch (and puts the originals back afterwards), so that a
script loaded inside it binds our versions, which call the originals and add only what is ours:

* ``parse_cfg``: any ``devices`` value (solo-learn needs a list, Lightning's CPU accelerator an
  int), the newcomer checks of :mod:`sop_plugin.solo.checks`, and for linear evaluation a safe
  read of the pretrained checkpoint (:mod:`sop_plugin.solo.pretrained`);
* ``prepare_data`` / ``prepare_datasets``: nothing downloaded unless ``++data.download=True``;
  ``custom`` image folders evaluated at the training crop size instead of a fixed 224;
* ``Trainer``: :class:`PluginTrainer`, which adds atomic, safe checkpoint IO, the RNG states, the
  wall clock, the clean kNN, the empty-run warning, SIGTERM/SIGINT handling, the CSV logger, and
  SOP's DDP setting (no buffer re-broadcast: its memories are all-gathered, identical on every
  rank), and before ``fit`` checks that linear evaluation really loaded every backbone weight.

During linear evaluation torch's safe unpickler also admits the OmegaConf types solo-learn
checkpoints carry (``torch.serialization.safe_globals``), so solo-learn's own ``torch.load`` reads
them safely.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch
import torch
from lightning.pytorch import Trainer
from omegaconf import DictConfig, ListConfig, OmegaConf
from solo.utils.misc import omegaconf_select

from sop_plugin.runtime import AtomicCheckpointIO, RNGStateCheckpoint, num_devices
from sop_plugin.runtime.checkpoint import safe_globals
from sop_plugin.runtime.signals import SignalCatcher
from sop_plugin.solo.callbacks import NothingTrained, WallClock, clean_knn_from_cfg, interrupt_callback
from sop_plugin.solo.checks import preflight
from sop_plugin.solo.pretrained import backbone_state, check_backbone, trust_checkpoint

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
#: torch >= 2.6: full unpickling where ``weights_only`` is unset
_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def parse_with_devices(parse_fn: Callable[[DictConfig], DictConfig], cfg: DictConfig) -> DictConfig:
    """Run solo-learn's ``parse_fn`` (which needs ``len(cfg.devices)``) with any ``devices``."""
    OmegaConf.set_struct(cfg, False)
    devices = omegaconf_select(cfg, "devices", 1)
    if not isinstance(devices, ListConfig):
        cfg.devices = list(range(num_devices(devices)))
    cfg = parse_fn(cfg)
    cfg.devices = devices
    return cfg


# ---------------------------------------------------------------------- loaders
def _image_folder_loaders(
    train_path: str | Path,
    val_path: str | Path,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    num_workers: int,
):
    """Train/val loaders over ImageFolders at ``crop_size`` (solo-learn's loader settings), yielding
    images [B, 3, crop_size, crop_size] and labels [B]."""
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
    pin = torch.cuda.is_available()
    common = {"batch_size": batch_size, "num_workers": num_workers, "pin_memory": pin}
    train = DataLoader(ImageFolder(str(train_path), t_train), shuffle=True, drop_last=True, **common)
    return train, DataLoader(ImageFolder(str(val_path), t_val), drop_last=False, **common)


# ---------------------------------------------------------------------- the Trainer
class PluginTrainer(Trainer):
    """Lightning's Trainer with the pieces of the launch in progress (:attr:`attachment`) added."""

    attachment: ClassVar[Attachment | None] = None
    #: the solo-learn script that built this Trainer (None: our own launcher)
    launched_by: Path | None = None

    # functools.wraps keeps the signature solo-learn's scripts filter their cfg with
    @functools.wraps(Trainer.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        attachment = type(self).attachment
        if attachment is not None:
            kwargs = attachment.trainer_kwargs(kwargs)
        super().__init__(*args, **kwargs)
        if attachment is not None:
            attachment.trainer, self.launched_by = self, attachment.script

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``fit``, after the launch's own preparations (:meth:`Attachment.before_fit`)."""
        if type(self).attachment is not None:
            type(self).attachment.before_fit(self, model, *args, **kwargs)
        return super().fit(model, *args, **kwargs)


def plugin_callbacks(cfg: DictConfig, logdir: str, catcher: SignalCatcher | None) -> list[Any]:
    """The callbacks every launch adds to solo-learn's (the clean kNN joins at ``fit``, with the val
    loader)."""
    callbacks: list[Any] = [RNGStateCheckpoint(), WallClock(), NothingTrained()]
    if catcher is not None:
        callbacks.append(interrupt_callback(cfg, catcher, logdir))
    return callbacks


def _is_plain_ddp(strategy: Any) -> bool:
    """Whether the Trainer's ``strategy`` is Lightning's DDP as is (the name, or a bare ``DDPStrategy``)."""
    from lightning.pytorch.strategies.ddp import DDPStrategy

    return strategy == "ddp" or type(strategy) is DDPStrategy


def _loggers(logger: Any) -> list[Any]:
    """The Trainer's ``logger`` argument as a list of loggers (None or True: none of ours)."""
    if logger in (None, True):
        return []
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


# ---------------------------------------------------------------------- one launch
class Attachment:
    """Our part of one launch: ``kind`` "pretrain" or "linear"; ``script`` the solo-learn script run
    (None: our own launcher)."""

    def __init__(self, kind: str, catcher: SignalCatcher | None = None, script: Path | None = None) -> None:
        if kind not in ("pretrain", "linear"):
            raise ValueError(f"kind={kind!r} must be 'pretrain' or 'linear'")
        self.kind, self.catcher, self.script = kind, catcher, script
        self.cfg: DictConfig | None = None
        self.trainer: PluginTrainer | None = None
        self.hooks: dict[str, Callable[..., Any]] = {}
        self.weights: dict[str, torch.Tensor] | None = None
        #: environment variables set for this launch, with their previous values
        self._env: dict[str, str | None] = {}

    # -- solo-learn's parse_cfg
    def parse(self, parse_fn: Callable[[DictConfig], DictConfig], cfg: DictConfig) -> DictConfig:
        """solo-learn's ``parse_fn`` with any ``devices``, then the newcomer checks (pretraining) or the
        pretrained weights read safely (linear evaluation)."""
        cfg = parse_with_devices(parse_fn, cfg)
        if self.kind == "pretrain":
            preflight(cfg)
        else:
            if cfg.pretrained_feature_extractor is None:
                raise ValueError("set pretrained_feature_extractor to the pretraining checkpoint (.ckpt)")
            trusted = trust_checkpoint(cfg)
            self.weights = backbone_state(cfg.pretrained_feature_extractor, trusted)
            if trusted:  # solo-learn's own torch.load of that file then unpickles in full too
                self._env.setdefault(_NO_WEIGHTS_ONLY, os.environ.get(_NO_WEIGHTS_ONLY))
                os.environ[_NO_WEIGHTS_ONLY] = "1"
        self.cfg = cfg
        return cfg

    @property
    def logdir(self) -> str:
        """Where the launch's checkpoints go: ``checkpoint.dir`` / the method (or ``linear``)."""
        run = self.cfg.method if self.kind == "pretrain" else "linear"
        return os.path.join(self.cfg.checkpoint.dir, run)

    # -- solo-learn's data preparation
    def eval_crop(self) -> tuple[int, Sequence[float], Sequence[float]]:
        """Crop size, mean and std of evaluation: the first training augmentation's (pretraining) or
        ``data.augmentations`` (linear evaluation); 224 and ImageNet statistics where not given."""
        if self.kind == "pretrain":
            aug = self.cfg.augmentations[0]
        else:
            aug = omegaconf_select(self.cfg, "data.augmentations", {})
        aug = aug or {}
        mean, std = aug.get("mean", _IMAGENET_MEAN), aug.get("std", _IMAGENET_STD)
        return int(aug.get("crop_size", 224)), mean, std

    def prepare_data(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """solo-learn's classification loaders (``original``), but no download unless asked, and custom
        image folders at the evaluation crop size (:meth:`eval_crop`)."""
        call = self._no_download(original, *args, **kwargs)
        call.apply_defaults()
        a = call.arguments
        crop, mean, std = self.eval_crop()
        if a["dataset"] == "custom" and crop != 224 and a["data_format"] == "image_folder":
            if a["auto_augment"]:
                raise ValueError("auto_augment is only supported at crop size 224 for custom datasets")
            paths = a["train_data_path"], a["val_data_path"]
            return _image_folder_loaders(*paths, crop, mean, std, a["batch_size"], a["num_workers"])
        return original(*call.args, **call.kwargs)

    def prepare_datasets(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """solo-learn's pretraining datasets (``original``), downloaded only with ``++data.download=True``."""
        call = self._no_download(original, *args, **kwargs)
        return original(*call.args, **call.kwargs)

    def _no_download(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> inspect.BoundArguments:
        """The call of ``original`` with ``download`` from ``data.download`` (default False) unless given."""
        call = inspect.signature(original).bind(*args, **kwargs)
        call.arguments.setdefault("download", bool(omegaconf_select(self.cfg, "data.download", False)))
        return call

    # -- the Trainer
    def trainer_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """solo-learn's Trainer arguments with our callbacks, checkpoint IO, loggers and DDP setting."""
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.strategies.ddp import DDPStrategy

        if self.cfg is None:
            why = "the Trainer was built before solo-learn's parse_cfg ran: not a solo-learn launch"
            raise RuntimeError(why)
        cfg, kwargs = self.cfg, dict(kwargs)
        ours = plugin_callbacks(cfg, self.logdir, self.catcher)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *ours]
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), AtomicCheckpointIO(trust_checkpoint(cfg))]
        strategy = kwargs.get("strategy")
        if strategy is None:
            kwargs["strategy"] = "auto"
        elif omegaconf_select(cfg, "method") == "sop" and _is_plain_ddp(strategy):
            kwargs["strategy"] = DDPStrategy(find_unused_parameters=False, broadcast_buffers=False)
        logger = kwargs.get("logger")
        if logger is None:  # solo-learn's scripts pass None without wandb: the cfg's ``logger`` then
            logger = omegaconf_select(cfg, "logger", None)
        if omegaconf_select(cfg, "csv.enabled", False) and logger is not False:
            logger = [*_loggers(logger), CSVLogger(save_dir=str(cfg.csv.dir), name=str(cfg.name))]
        kwargs["logger"] = logger
        return kwargs

    def before_fit(self, trainer: PluginTrainer, model: Any, *args: Any, **kwargs: Any) -> None:
        """The clean kNN (which needs the val loader) and, for linear evaluation, the loaded-weights
        check."""
        if self.kind == "linear":
            check_backbone(model.backbone, self.weights, str(self.cfg.pretrained_feature_extractor))
            return
        bound = inspect.signature(Trainer.fit).bind(trainer, model, *args, **kwargs).arguments
        val = bound.get("val_dataloaders")
        if val is None and bound.get("datamodule") is not None:
            val = bound["datamodule"].val_dataloader()
        knn = clean_knn_from_cfg(self.cfg, val)
        if knn is not None:
            trainer.callbacks.append(knn)

    # -- the scope of one launch
    @contextlib.contextmanager
    def attached(self) -> Iterator[Attachment]:
        """Our versions of solo-learn's four names in place (and the safe loader's OmegaConf types for
        linear evaluation) until the launch ends; the originals are back afterwards, on errors too."""
        import solo.args.linear
        import solo.args.pretrain
        import solo.data.classification_dataloader as classify
        import solo.data.pretrain_dataloader as pretrain

        parse = solo.args.pretrain if self.kind == "pretrain" else solo.args.linear
        datasets = functools.partial(self.prepare_datasets, pretrain.prepare_datasets)
        swaps = [
            (parse, "parse_cfg", functools.partial(self.parse, parse.parse_cfg)),
            (classify, "prepare_data", functools.partial(self.prepare_data, classify.prepare_data)),
            (pretrain, "prepare_datasets", datasets),
            (lightning.pytorch, "Trainer", PluginTrainer),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
        if PluginTrainer.attachment is not None:
            raise RuntimeError("another solo-learn launch is in progress in this process")
        PluginTrainer.attachment = self
        try:
            for owner, name, new in swaps:
                setattr(owner, name, new)
                self.hooks[name] = new
            safe_types = contextlib.nullcontext()
            if self.kind == "linear":
                safe_types = torch.serialization.safe_globals(safe_globals())
            with safe_types:
                yield self
        finally:
            for owner, name, old in reversed(saved):
                setattr(owner, name, old)
            for key, value in self._env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            PluginTrainer.attachment = None
