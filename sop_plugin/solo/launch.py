"""``sop-solo-pretrain`` and ``sop-solo-linear``: solo-learn's own launch scripts, with the plugin attached.

Same hydra command line as solo-learn's ``main_pretrain.py`` / ``main_linear.py``::

    sop-solo-pretrain [--solo-root DIR|none] --config-path scripts/pretrain/cifar --config-name sop.yaml key=value
    sop-solo-linear [--solo-root DIR|none] --config-path scripts/linear/cifar --config-name sop.yaml \\
        "pretrained_feature_extractor='trained_models/sop/<run>/<name>-ep=99.ckpt'"

How a launch runs:

1. ``import sop_plugin.solo`` registers ``METHODS["sop"]`` and ``METHODS["ibot"]``; hydra composes the config.
2. :func:`find_solo_root` finds the user's solo-learn clone, whose root holds the two scripts (they are not
   part of the installed package): ``--solo-root DIR``, else ``$SOLO_LEARN_ROOT``, else the folder pip
   installed solo-learn from, else the folder above the imported ``solo`` package (an editable install).
3. Inside :meth:`~sop_plugin.solo.attach.Attachment.attached` the script is loaded (``runpy``, not as
   ``__main__``: its imports and definitions run, its own ``main()`` call does not) and its hydra ``main`` is
   called with the composed config (hydra passes a given config straight to the task function). solo-learn's
   own code then builds the model, the data (DALI too), Checkpointer, auto-resume, AutoUMAP, wandb and the
   Trainer; what is ours joins through the names the script imports (:mod:`sop_plugin.solo.attach`).
4. Without a clone (``--solo-root none``, or none found), :func:`own_pretrain` / :func:`own_linear`, a small
   launcher of ours, assembles solo-learn's building blocks for the plain case (PyTorch loaders); options
   that only solo-learn's scripts implement (DALI, wandb, AutoUMAP, mixup/cutmix) are refused with the fix.
5. What only the command line does: SIGTERM / SIGINT stop training at the next batch end with an atomic
   checkpoint of that step; one stderr line names it with the command that resumes, and the process exits
   with 128 + the signal (143, 130); a signal during setup stops at once. A launch that trained nothing
   (auto-resume of a finished run) exits with status 4 after its warning.
"""

from __future__ import annotations

import inspect
import json
import os
import runpy
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from solo.utils.misc import omegaconf_select

import sop_plugin.solo  # noqa: F401  (registers METHODS["sop"], ["ibot"]; clear ImportError without solo-learn)
from sop_plugin.runtime.devices import is_rank_zero
from sop_plugin.runtime.interrupt import Interrupted, SignalCatcher
from sop_plugin.runtime.resume_message import interrupted_message
from sop_plugin.solo.attach import (  # noqa: F401  (parse_with_devices, trust_checkpoint: re-exported helpers)
    Attachment,
    PluginTrainer,
    load_backbone_weights,
    parse_with_devices,
    trust_checkpoint,
)

#: environment variable naming the solo-learn clone (``none``: our own launcher)
SOLO_ROOT_ENV = "SOLO_LEARN_ROOT"
#: solo-learn's launch script of each kind, in its repository root
SCRIPTS = {"pretrain": "main_pretrain.py", "linear": "main_linear.py"}
#: the command line as given (with ``--solo-root``), for the resume command an interrupted run prints
_CLI_ARGV: list[str] = []
#: exit status of a launch that ended without a single optimisation step (e.g. auto-resumed a finished run)
EXIT_NOTHING_TRAINED = 4


# ---------------------------------------------------------------------- finding solo-learn's scripts
def _clone_candidates() -> list[Path]:
    """The folder pip installed solo-learn from (``direct_url.json``) and the one above the ``solo`` package."""
    from importlib import metadata

    import solo

    found = []
    try:
        url = json.loads(metadata.distribution("solo-learn").read_text("direct_url.json") or "{}").get("url", "")
    except (metadata.PackageNotFoundError, ValueError):
        url = ""
    if url.startswith("file://"):
        found.append(Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)))
    return [*found, Path(solo.__file__).resolve().parents[1]]


def find_solo_root(value: str | None = None) -> Path | None:
    """The solo-learn clone whose scripts to run, or None for our own launcher.

    ``value`` (``--solo-root``; default ``$SOLO_LEARN_ROOT``): a clone, or ``none``. Unset or empty: the
    first of :func:`_clone_candidates` that holds both scripts, else None.
    """
    value = os.environ.get(SOLO_ROOT_ENV, "") if value is None else value
    if value.strip().lower() == "none":
        return None
    if value.strip():
        root = Path(value).expanduser().resolve()
        missing = [name for name in SCRIPTS.values() if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--solo-root / {SOLO_ROOT_ENV}={value!r}: {root} has no {' or '.join(missing)}; give the root "
                "of a clone of solo-learn's repository, or 'none' for sop-plugin's own launcher"
            )
        return root
    return next((r for r in _clone_candidates() if all((r / s).is_file() for s in SCRIPTS.values())), None)


def solo_main(script: Path, attachment: Attachment) -> Callable[[DictConfig], Any]:
    """The hydra ``main`` of solo-learn's ``script``, loaded inside ``attachment.attached()``."""
    names = runpy.run_path(str(script), run_name=f"solo_learn_{script.stem}")
    unbound = [name for name in ("parse_cfg", "Trainer") if names.get(name) is not attachment.hooks[name]]
    if unbound or not callable(names.get("main")):
        raise RuntimeError(
            f"{script} does not import {' and '.join(unbound) or 'parse_cfg and Trainer'} by name and define main() "
            "as solo-learn 1.0.6's scripts do, so sop-plugin cannot attach to it: use a solo-learn 1.0.6 clone, "
            "or --solo-root none (sop-plugin's own launcher)"
        )
    return names["main"]


# ---------------------------------------------------------------------- our own launcher (no clone at hand)
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
            f"{', '.join(used)}: only solo-learn's own {SCRIPTS[kind]} does this, and no solo-learn clone was "
            f"found; pass --solo-root DIR (a clone of vturrisi/solo-learn) or set {SOLO_ROOT_ENV}=DIR"
        )


def _resume_from(cfg: DictConfig, logdir: str) -> str | None:
    """``resume_from_checkpoint`` if given, else what solo-learn's AutoResumer finds when enabled."""
    from solo.utils.auto_resumer import AutoResumer

    explicit = cfg.pop("resume_from_checkpoint", None)
    if explicit is not None or not cfg.auto_resume.enabled:
        return None if explicit is None else str(explicit)
    found, _ = AutoResumer(checkpoint_dir=logdir, max_hours=cfg.auto_resume.max_hours).find_checkpoint(cfg)
    if found is not None:
        print(f"Resuming from previous checkpoint that matches specifications: '{found}'")
    return None if found is None else str(found)


def _fit(cfg: DictConfig, logdir: str, model: Any, train: Any, val: Any) -> None:
    """One :class:`PluginTrainer` from the cfg keys that are Trainer arguments, with solo-learn's Checkpointer."""
    from solo.utils.checkpointer import Checkpointer

    ckpt_path = _resume_from(cfg, logdir)
    params = inspect.signature(PluginTrainer.__init__).parameters
    args = {k: v for k, v in OmegaConf.to_container(cfg).items() if k in params}
    c = cfg.checkpoint
    saver = [Checkpointer(cfg, logdir=logdir, frequency=c.frequency, keep_prev=c.keep_prev)] if c.enabled else []
    args.update(callbacks=saver, logger=None, enable_checkpointing=False)
    PluginTrainer(**args).fit(model, train, val, ckpt_path=ckpt_path)


def _labelled_val(d: DictConfig) -> bool:
    """Whether ``cfg.data`` has labelled validation images (custom folders and ImageNet only with a val_path)."""
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
    views = [NCropAugmentation(build_transform_pipeline(d.dataset, aug), aug.num_crops) for aug in cfg.augmentations]
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
    backbone = BaseMethod._BACKBONES[cfg.backbone.name](method=cfg.pretrain_method, **cfg.backbone.kwargs)
    if cfg.backbone.name.startswith("resnet"):  # as solo-learn's methods build it: no classifier, CIFAR's stem
        backbone.fc = nn.Identity()
        if cfg.data.dataset in ("cifar10", "cifar100"):
            backbone.conv1, backbone.maxpool = nn.Conv2d(3, 64, 3, stride=1, padding=2, bias=False), nn.Identity()
    load_backbone_weights(backbone, cfg.pretrained_feature_extractor, weights=attachment.weights)
    loss = nn.CrossEntropyLoss(label_smoothing=float(cfg.label_smoothing))
    model = LinearModel(backbone, loss_func=loss, mixup_func=None, cfg=cfg)
    train, val = _classification_loaders(cfg, auto_augment=cfg.auto_augment)
    _fit(cfg, attachment.logdir, model, train, val)


# ---------------------------------------------------------------------- one launch
def launch(kind: str, cfg: DictConfig, catcher: SignalCatcher | None = None) -> PluginTrainer:
    """Pretrain (``kind`` "pretrain") or evaluate ("linear") ``cfg`` through solo-learn's script when a clone
    is found (:func:`find_solo_root`), else through our own launcher; returns the Trainer.

    ``catcher``: the installed :class:`SignalCatcher` of the command line (SIGTERM/SIGINT then raise
    :class:`Interrupted` after a checkpoint of the current step); None: no signal handling.
    """
    root = find_solo_root()
    attachment = Attachment(kind, catcher, script=None if root is None else root / SCRIPTS[kind])
    if is_rank_zero():
        how = f"solo-learn's {attachment.script}" if root else "sop-plugin's own launcher (no solo-learn clone)"
        print(f"sop-solo-{kind}: running {how} with sop-plugin attached", file=sys.stderr, flush=True)
    with attachment.attached():
        if attachment.script is not None:
            solo_main(attachment.script, attachment)(cfg)
        else:
            (own_pretrain if kind == "pretrain" else own_linear)(cfg, attachment)
    if attachment.trainer is None:
        raise RuntimeError(f"{attachment.script or 'the launcher'} ended without building a Trainer")
    return attachment.trainer


def run_pretrain(cfg: DictConfig, catcher: SignalCatcher | None = None) -> PluginTrainer:
    """Pretrain ``cfg.method`` (see :func:`launch`)."""
    return launch("pretrain", cfg, catcher)


def run_linear(cfg: DictConfig, catcher: SignalCatcher | None = None) -> PluginTrainer:
    """Linear evaluation of ``cfg.pretrained_feature_extractor`` (see :func:`launch`)."""
    return launch("linear", cfg, catcher)


# ---------------------------------------------------------------------- command line
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


def take_solo_root(argv: list[str]) -> list[str]:
    """``argv`` without ``--solo-root DIR`` / ``--solo-root=DIR``, whose value goes to ``$SOLO_LEARN_ROOT``
    (inherited by DDP's re-launched ranks)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--solo-root" and i + 1 < len(argv):
            os.environ[SOLO_ROOT_ENV], i = argv[i + 1], i + 2
            continue
        if arg.startswith("--solo-root="):
            os.environ[SOLO_ROOT_ENV] = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out


def _run_cli(prog: str, run: Callable[[DictConfig, SignalCatcher], Any], cfg: DictConfig) -> None:
    """``run(cfg, catcher)`` under SIGTERM/SIGINT handling: message and exit status 128 + signal."""
    with SignalCatcher(prog=prog) as catcher:
        try:
            catcher.set_immediate("setup")  # until the Trainer sets up: nothing to save yet
            trainer = run(cfg, catcher)
        except Interrupted as stop:
            if is_rank_zero():
                print(interrupted_message(prog, stop, _CLI_ARGV or sys.argv), file=sys.stderr, flush=True)
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
    """``sop-solo-pretrain [--solo-root DIR|none] --config-path DIR --config-name NAME.yaml [key=value ...]``."""
    _CLI_ARGV[:] = absolute_config_path(sys.argv)
    sys.argv = absolute_config_path(take_solo_root(sys.argv))
    _pretrain_hydra()


def linear_main() -> None:
    """``sop-solo-linear [--solo-root DIR|none] --config-path DIR --config-name NAME.yaml [key=value ...]``."""
    _CLI_ARGV[:] = absolute_config_path(sys.argv)
    sys.argv = absolute_config_path(take_solo_root(sys.argv))
    _linear_hydra()


if __name__ == "__main__":  # python -m sop_plugin.solo.launch behaves as sop-solo-pretrain
    pretrain_main()
