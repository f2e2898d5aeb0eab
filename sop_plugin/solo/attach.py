"""What our launchers add to a solo-learn launch, whoever assembles it (solo-learn's script or ours).

solo-learn's ``main_pretrain.py`` / ``main_linear.py`` build everything from four names they import:
``parse_cfg``, ``prepare_data`` (the classification loaders), ``prepare_datasets`` (pretraining data) and
``lightning.pytorch.Trainer``. :meth:`Attachment.attached` replaces those four module attributes for the
duration of one launch (and puts the originals back afterwards), so that a script loaded inside it binds
our versions, which call the originals and add only what is ours:

* ``parse_cfg``: any ``devices`` value (solo-learn needs a list, Lightning's CPU accelerator an int), the
  newcomer checks of :mod:`sop_plugin.solo.checks`, and for linear evaluation a safe read of the
  pretrained checkpoint (:func:`backbone_state`);
* ``prepare_data`` / ``prepare_datasets``: nothing downloaded unless ``++data.download=True``; ``custom``
  image folders evaluated at the training crop size instead of a fixed 224;
* ``Trainer``: :class:`PluginTrainer`, which adds atomic, safe checkpoint IO, the RNG states, the wall clock,
  the clean kNN, the empty-run warning, SIGTERM/SIGINT handling, the CSV logger, and SOP's DDP setting
  (no buffer re-broadcast: its memories are all-gathered, identical on every rank), and before ``fit``
  checks that linear evaluation really loaded every backbone weight.

During linear evaluation torch's safe unpickler also admits the OmegaConf types solo-learn checkpoints
carry (``torch.serialization.safe_globals``), so solo-learn's own ``torch.load`` reads them safely.
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

from sop_plugin.runtime import AtomicCheckpointIO, RNGStateCheckpoint, load_checkpoint, num_devices
from sop_plugin.runtime.checkpoint import safe_globals
from sop_plugin.runtime.interrupt import InterruptCallback, SignalCatcher
from sop_plugin.solo.callbacks import NothingTrained, WallClock, clean_knn_from_cfg
from sop_plugin.solo.checks import preflight

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch >= 2.6: full unpickling where weights_only is unset


def trust_checkpoint(cfg: DictConfig) -> bool:
    """``++trust_checkpoint=True``: load checkpoints holding arbitrary pickled objects (runs their code)."""
    value = omegaconf_select(cfg, "trust_checkpoint", False)
    if not isinstance(value, bool):
        raise ValueError(f"trust_checkpoint={value!r} must be True or False")
    return value


def parse_with_devices(parse_fn: Callable[[DictConfig], DictConfig], cfg: DictConfig) -> DictConfig:
    """Run solo-learn's ``parse_fn`` (which needs ``len(cfg.devices)``) with any ``devices``."""
    OmegaConf.set_struct(cfg, False)
    devices = omegaconf_select(cfg, "devices", 1)
    if not isinstance(devices, ListConfig):
        cfg.devices = list(range(num_devices(devices)))
    cfg = parse_fn(cfg)
    cfg.devices = devices
    return cfg


# ---------------------------------------------------------------------- checkpoints of linear evaluation
def backbone_state(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` weights (prefix removed) of a pretraining checkpoint, read with the safe loader.

    ``trusted`` (``++trust_checkpoint=True``) allows other pickled types, with a warning.
    """
    path = str(path)
    if not path.endswith((".ckpt", ".pth", ".pt")):
        raise ValueError(f"pretrained_feature_extractor={path!r} must be a .ckpt, .pth or .pt file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_feature_extractor {path!r} does not exist")
    state = load_checkpoint(path, trust_checkpoint=trusted)
    state = state.get("state_dict", state)
    for prefix in ("backbone.", "encoder."):  # "encoder": checkpoints of old solo-learn versions
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            return weights
    raise ValueError(f"{path} holds no 'backbone.*' weights: is it a pretraining checkpoint?")


def check_backbone(backbone: torch.nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    """Raise unless ``backbone`` holds every one of its weights as ``weights`` gives it (solo-learn's
    loader ignores missing ones silently)."""
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in weights)
    if missing:
        raise ValueError(
            f"{path} does not fit the configured backbone: missing {missing[:8]} "
            "(check backbone.name and backbone.kwargs against the pretraining config)"
        )
    differ = sorted(k for k, v in own.items() if not torch.equal(v.cpu(), weights[k].to(v.dtype)))
    if differ:
        raise ValueError(f"the backbone weights {differ[:8]} were not loaded from {path}")


def load_backbone_weights(
    backbone: torch.nn.Module,
    ckpt_path: str | Path,
    trusted: bool = False,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load all ``backbone.*`` weights of a solo-learn (or SOP) checkpoint into ``backbone`` (``weights``: read already)."""
    weights = backbone_state(ckpt_path, trusted) if weights is None else weights
    backbone.load_state_dict({k: v for k, v in weights.items() if k in backbone.state_dict()}, strict=False)
    check_backbone(backbone, weights, str(ckpt_path))


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


# ---------------------------------------------------------------------- the Trainer
class PluginTrainer(Trainer):
    """Lightning's Trainer with the pieces of the launch in progress (:attr:`attachment`) added."""

    attachment: ClassVar[Attachment | None] = None
    #: the solo-learn script that built this Trainer (None: our own launcher)
    launched_by: Path | None = None

    @functools.wraps(Trainer.__init__)  # keeps the signature solo-learn's scripts filter their cfg with
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        attachment = type(self).attachment
        if attachment is not None:
            kwargs = attachment.trainer_kwargs(kwargs)
        super().__init__(*args, **kwargs)
        if attachment is not None:
            attachment.trainer, self.launched_by = self, attachment.script

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> None:
        if type(self).attachment is not None:
            type(self).attachment.before_fit(self, model, *args, **kwargs)
        return super().fit(model, *args, **kwargs)


def interrupt_callback(cfg: DictConfig, catcher: SignalCatcher, logdir: str) -> InterruptCallback:
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


def plugin_callbacks(cfg: DictConfig, logdir: str, catcher: SignalCatcher | None) -> list[Any]:
    """The callbacks every launch adds to solo-learn's (the clean kNN joins at ``fit``, with the val loader)."""
    callbacks: list[Any] = [RNGStateCheckpoint(), WallClock(), NothingTrained()]
    if catcher is not None:
        callbacks.append(interrupt_callback(cfg, catcher, logdir))
    return callbacks


# ---------------------------------------------------------------------- one launch
class Attachment:
    """Our part of one launch: ``kind`` "pretrain" or "linear"; ``script`` the solo-learn script run (or None)."""

    def __init__(self, kind: str, catcher: SignalCatcher | None = None, script: Path | None = None) -> None:
        if kind not in ("pretrain", "linear"):
            raise ValueError(f"kind={kind!r} must be 'pretrain' or 'linear'")
        self.kind, self.catcher, self.script = kind, catcher, script
        self.cfg: DictConfig | None = None
        self.trainer: PluginTrainer | None = None
        self.hooks: dict[str, Callable[..., Any]] = {}
        self.weights: dict[str, torch.Tensor] | None = None
        self._env: dict[str, str | None] = {}  # environment variables set for this launch: previous values

    # -- solo-learn's parse_cfg
    def parse(self, parse_fn: Callable[[DictConfig], DictConfig], cfg: DictConfig) -> DictConfig:
        cfg = parse_with_devices(parse_fn, cfg)
        if self.kind == "pretrain":
            preflight(cfg)
        else:
            if cfg.pretrained_feature_extractor is None:
                raise ValueError("set pretrained_feature_extractor to the pretraining checkpoint (.ckpt)")
            self.weights = backbone_state(cfg.pretrained_feature_extractor, trust_checkpoint(cfg))
            if trust_checkpoint(cfg):  # solo-learn's own torch.load of that file then unpickles in full too
                self._env.setdefault(_NO_WEIGHTS_ONLY, os.environ.get(_NO_WEIGHTS_ONLY))
                os.environ[_NO_WEIGHTS_ONLY] = "1"
        self.cfg = cfg
        return cfg

    @property
    def logdir(self) -> str:
        return os.path.join(self.cfg.checkpoint.dir, self.cfg.method if self.kind == "pretrain" else "linear")

    # -- solo-learn's data preparation
    def eval_crop(self) -> tuple[int, Sequence[float], Sequence[float]]:
        """Crop size, mean and std of evaluation: the first training augmentation's (pretraining) or
        ``data.augmentations`` (linear evaluation); 224 and ImageNet statistics where not given."""
        pretrain = self.kind == "pretrain"
        aug = self.cfg.augmentations[0] if pretrain else omegaconf_select(self.cfg, "data.augmentations", {})
        aug = aug or {}
        return int(aug.get("crop_size", 224)), aug.get("mean", _IMAGENET_MEAN), aug.get("std", _IMAGENET_STD)

    def prepare_data(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = inspect.signature(original).bind(*args, **kwargs)
        call.arguments.setdefault("download", bool(omegaconf_select(self.cfg, "data.download", False)))
        call.apply_defaults()
        a = call.arguments
        crop, mean, std = self.eval_crop()
        if a["dataset"] == "custom" and crop != 224 and a["data_format"] == "image_folder":
            if a["auto_augment"]:
                raise ValueError("auto_augment is only supported at crop size 224 for custom datasets")
            return _image_folder_loaders(
                a["train_data_path"], a["val_data_path"], crop, mean, std, a["batch_size"], a["num_workers"]
            )
        return original(*call.args, **call.kwargs)

    def prepare_datasets(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = inspect.signature(original).bind(*args, **kwargs)
        call.arguments.setdefault("download", bool(omegaconf_select(self.cfg, "data.download", False)))
        return original(*call.args, **call.kwargs)

    # -- the Trainer
    def trainer_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """solo-learn's Trainer arguments with our callbacks, checkpoint IO, loggers and DDP setting."""
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.strategies.ddp import DDPStrategy

        if self.cfg is None:
            raise RuntimeError("the Trainer was built before solo-learn's parse_cfg ran: not a solo-learn launch")
        cfg, kwargs = self.cfg, dict(kwargs)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *plugin_callbacks(cfg, self.logdir, self.catcher)]
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), AtomicCheckpointIO(trust_checkpoint(cfg))]
        strategy = kwargs.get("strategy")
        if strategy is None:
            kwargs["strategy"] = "auto"
        elif omegaconf_select(cfg, "method") == "sop" and (strategy == "ddp" or type(strategy) is DDPStrategy):
            kwargs["strategy"] = DDPStrategy(find_unused_parameters=False, broadcast_buffers=False)
        logger = kwargs.get("logger")
        if logger is None:  # solo-learn's scripts pass None without wandb: the cfg's ``logger`` then
            logger = omegaconf_select(cfg, "logger", None)
        if omegaconf_select(cfg, "csv.enabled", False) and logger is not False:
            others = [] if logger in (None, True) else list(logger) if isinstance(logger, (list, tuple)) else [logger]
            logger = [*others, CSVLogger(save_dir=str(cfg.csv.dir), name=str(cfg.name))]
        kwargs["logger"] = logger
        return kwargs

    def before_fit(self, trainer: PluginTrainer, model: Any, *args: Any, **kwargs: Any) -> None:
        """The clean kNN (which needs the val loader) and, for linear evaluation, the loaded-weights check."""
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
        swaps = [
            (parse, "parse_cfg", functools.partial(self.parse, parse.parse_cfg)),
            (classify, "prepare_data", functools.partial(self.prepare_data, classify.prepare_data)),
            (pretrain, "prepare_datasets", functools.partial(self.prepare_datasets, pretrain.prepare_datasets)),
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
            linear = self.kind == "linear"
            with torch.serialization.safe_globals(safe_globals()) if linear else contextlib.nullcontext():
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
