"""``resume=PATH``: which checkpoint each method resumes from, validated before any training.

``PATH`` is either one method's checkpoint file (then ``methods`` must name that one
method) or a run directory (the ``out`` of an earlier run), where every method resumes
from ``<PATH>/<method>/checkpoints/last.ckpt`` if it has one and starts afresh if not.
Every checkpoint is read with the safe loader first (truncated, corrupt or unsafe files
are refused here, never half-loaded by Lightning) and checked against the config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sop_plugin.runtime import CheckpointError, load_checkpoint

log = logging.getLogger("sop_bench")

#: config sections that fix parameter and buffer shapes: they must match the checkpoint
SHAPE_KEYS = ("model", "head")
#: config sections whose change makes the resumed run differ from an uninterrupted one
TRAJECTORY_KEYS = ("seed", "crops", "masks", "optim", "ema", "temps")
#: settings that may change on resume without changing the trajectory
HARMLESS = (
    "train.num_workers",
    "train.checkpoint_every_n_steps",
    "train.on_nonfinite",
    "train.max_consecutive_skips",
)
REQUIRED = ("state_dict", "optimizer_states", "loops", "global_step", "hyper_parameters")


def checkpoint_path(run_dir: Path, method: str) -> Path:
    """Where a run directory keeps ``method``'s last checkpoint."""
    return run_dir / method / "checkpoints" / "last.ckpt"


def resolve_resume(cfg: dict[str, Any]) -> dict[str, Path]:
    """Method -> checkpoint to resume from (methods without one start afresh).

    Raises:
        ValueError: (the runner's ``ConfigError``) with the setting and the fix.
        CheckpointError: an unreadable or unsafe checkpoint.
    """
    resume = cfg.get("resume")
    if not resume:
        return {}
    path = Path(str(resume)).expanduser()
    methods = list(cfg["methods"])
    if path.is_file():
        if len(methods) != 1:
            raise ValueError(
                f"resume={path} is one method's checkpoint but methods={methods}: set methods=[<its "
                f"method>] or pass the run directory (resume=<out of that run>) to resume every method"
            )
        paths = {methods[0]: path}
    elif path.is_dir():
        paths = {m: checkpoint_path(path, m) for m in methods if checkpoint_path(path, m).is_file()}
        if (
            not paths and not (path / "results.json").is_file()
        ):  # a run stopped before its first checkpoint has one
            raise ValueError(
                f"resume={path}: no {checkpoint_path(path, '<method>')} for any of methods={methods}; "
                f"pass a checkpoint file or the `out` directory of an earlier run"
            )
        for m in methods:
            if m not in paths:
                log.info("resume: no checkpoint for %s under %s, training it from scratch", m, path)
    else:
        raise ValueError(
            f"resume={path} does not exist: pass a checkpoint file (.../<method>/checkpoints/last.ckpt) "
            f"or the `out` directory of an earlier run"
        )
    for method, ckpt_path in paths.items():
        check_checkpoint(ckpt_path, method, cfg)
    return paths


def check_checkpoint(path: Path, method: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Load ``path`` safely and check it is a complete benchmark checkpoint of ``method`` under ``cfg``."""
    ckpt = load_checkpoint(path, trust_checkpoint=bool(cfg.get("trust_checkpoint", False)))
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}: it is not a full sop-bench training checkpoint "
            f"(weights-only?); resume needs the last.ckpt that training wrote"
        )
    hp = ckpt["hyper_parameters"]
    saved_method = hp.get("method")
    if saved_method != method:
        raise ValueError(
            f"resume: checkpoint {path} was trained with method {saved_method!r}, not {method!r}: "
            f"set methods=[{saved_method}] or pick that method's checkpoint"
        )
    saved = hp.get("cfg", {})
    shape_diff = _diff(saved, cfg, (*SHAPE_KEYS, method))
    if shape_diff:
        raise ValueError(
            f"resume: checkpoint {path} does not fit the config: {'; '.join(shape_diff)}. Resume with "
            f"the settings of the run that wrote it"
        )
    drift = _diff(saved, cfg, (*TRAJECTORY_KEYS, "train"), ignore=HARMLESS)
    if drift:
        log.warning(
            "resume: settings differ from the run that wrote %s (%s): "
            "the result will not match an uninterrupted run",
            path,
            "; ".join(drift),
        )
    return ckpt


def _diff(
    saved: dict[str, Any], cfg: dict[str, Any], sections: tuple[str, ...], ignore: tuple[str, ...] = ()
) -> list[str]:
    out: list[str] = []
    for section in sections:
        for key, (old, new) in _flat_diff(saved.get(section), cfg.get(section), section).items():
            if key not in ignore:
                out.append(f"{key}: checkpoint {old!r}, config {new!r}")
    return out


def _flat_diff(old: Any, new: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        diff: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(old) | set(new)):
            diff.update(_flat_diff(old.get(key), new.get(key), f"{prefix}.{key}"))
        return diff
    return {} if old == new else {prefix: (old, new)}
