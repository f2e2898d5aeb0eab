"""``sop-solo-pretrain`` and ``sop-solo-linear``: solo-learn's own launch scripts, plugin attached.

Same hydra command line as solo-learn's ``main_pretrain.py`` / ``main_linear.py``::

    sop-solo-pretrain [--solo-root DIR|none] --config-path scripts/pretrain/cifar \\
        --config-name sop.yaml key=value
    sop-solo-linear [--solo-root DIR|none] --config-path scripts/linear/cifar --config-name sop.yaml \\
        "pretrained_feature_extractor='trained_models/sop/<run>/<name>-ep=99.ckpt'"

How a launch runs:

1. ``import sop_plugin.solo`` registers ``METHODS["sop"]`` and ``METHODS["ibot"]``; hydra composes
   the config.
2. :func:`~sop_plugin.solo.solo_scripts.find_solo_root` finds the user's solo-learn clone, whose
   root holds the two scripts (they are not part of the installed package): ``--solo-root DIR``,
   else ``$SOLO_LEARN_ROOT``, else the folder pip installed solo-learn from, else the folder above
   the imported ``solo`` package (an editable install).
3. Inside :meth:`~sop_plugin.solo.attach.Attachment.attached` the script is loaded (``runpy``, not
   as ``__main__``: its imports and definitions run, its own ``main()`` call does not) and its
   hydra ``main`` is called with the composed config (hydra passes a given config straight to the
   task function). solo-learn's own code then builds the model, the data (DALI too),
   Checkpointer, auto-resume, AutoUMAP, wandb and the Trainer; what is ours joins through the
   names the script imports (:mod:`sop_plugin.solo.attach`).
4. Without a clone (``--solo-root none``, or none found), a small launcher of ours
   (:mod:`sop_plugin.solo.own_launcher`) assembles solo-learn's building blocks for the plain case
   (PyTorch loaders); options that only solo-learn's scripts implement (DALI, wandb, AutoUMAP,
   mixup/cutmix) are refused with the fix.
5. What only the command line does: SIGTERM / SIGINT stop training at the next batch end with an
   atomic checkpoint of that step; one stderr line names it with the command that resumes, and the
   process exits with 128 + the signal (143, 130); a signal during setup stops at once. A launch
   that trained nothing (auto-resume of a finished run) exits with status 4 after its warning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sop_plugin.runtime.devices import is_rank_zero
from sop_plugin.runtime.resume_message import interrupted_message
from sop_plugin.runtime.signals import Interrupted, SignalCatcher

# before the modules below import solo-learn: without it, an ImportError that says how to install it
from sop_plugin.solo import register  # noqa: F401
from sop_plugin.solo.attach import Attachment, PluginTrainer
from sop_plugin.solo.own_launcher import own_linear, own_pretrain
from sop_plugin.solo.solo_scripts import SCRIPTS, SOLO_ROOT_ENV, find_solo_root, solo_main

#: the command line as given (with ``--solo-root``), for the resume command an interrupted run prints
_CLI_ARGV: list[str] = []
#: exit status of a launch that ended without an optimisation step (e.g. auto-resumed a finished run)
EXIT_NOTHING_TRAINED = 4


# ---------------------------------------------------------------------- one launch
def launch(kind: str, cfg: DictConfig, catcher: SignalCatcher | None = None) -> PluginTrainer:
    """Pretrain (``kind`` "pretrain") or evaluate ("linear") ``cfg`` through solo-learn's script when a
    clone is found (:func:`find_solo_root`), else through our own launcher; returns the Trainer.

    ``catcher``: the installed :class:`SignalCatcher` of the command line (SIGTERM/SIGINT then raise
    :class:`Interrupted` after a checkpoint of the current step); None: no signal handling.
    """
    root = find_solo_root()
    attachment = Attachment(kind, catcher, script=None if root is None else root / SCRIPTS[kind])
    if is_rank_zero():
        how = "sop-plugin's own launcher (no solo-learn clone)"
        if root is not None:
            how = f"solo-learn's {attachment.script}"
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
    """``argv`` without ``--solo-root DIR`` / ``--solo-root=DIR``, whose value goes to
    ``$SOLO_LEARN_ROOT`` (inherited by DDP's re-launched ranks)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--solo-root" and i + 1 < len(argv):
            os.environ[SOLO_ROOT_ENV] = argv[i + 1]
            i += 2
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
                message = interrupted_message(prog, stop, _CLI_ARGV or sys.argv)
                print(message, file=sys.stderr, flush=True)
            sys.exit(stop.exit_code)
    if any(getattr(cb, "trained_nothing", False) for cb in getattr(trainer, "callbacks", [])):
        # the callback's warning says why; a run that trained nothing is no success
        sys.exit(EXIT_NOTHING_TRAINED)


@hydra.main(version_base="1.2", config_path=None, config_name=None)
def _pretrain_hydra(cfg: DictConfig) -> None:
    """hydra's task function of ``sop-solo-pretrain``: the composed config, unlocked, to the launch."""
    OmegaConf.set_struct(cfg, False)
    _run_cli("sop-solo-pretrain", run_pretrain, cfg)


@hydra.main(version_base="1.2", config_path=None, config_name=None)
def _linear_hydra(cfg: DictConfig) -> None:
    """hydra's task function of ``sop-solo-linear``: the composed config, unlocked, to the launch."""
    OmegaConf.set_struct(cfg, False)
    _run_cli("sop-solo-linear", run_linear, cfg)


def pretrain_main() -> None:
    """``sop-solo-pretrain [--solo-root DIR|none] --config-path DIR --config-name NAME.yaml [k=v ...]``."""
    _CLI_ARGV[:] = absolute_config_path(sys.argv)
    sys.argv = absolute_config_path(take_solo_root(sys.argv))
    _pretrain_hydra()


def linear_main() -> None:
    """``sop-solo-linear [--solo-root DIR|none] --config-path DIR --config-name NAME.yaml [k=v ...]``."""
    _CLI_ARGV[:] = absolute_config_path(sys.argv)
    sys.argv = absolute_config_path(take_solo_root(sys.argv))
    _linear_hydra()


if __name__ == "__main__":  # python -m sop_plugin.solo.launch behaves as sop-solo-pretrain
    pretrain_main()
