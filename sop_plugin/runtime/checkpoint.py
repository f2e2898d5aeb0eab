"""Safe checkpoint loading: torch's ``weights_only`` unpickler with a short allow-list.

A checkpoint is a pickle, and unpickling an untrusted file can run arbitrary code.
:func:`load_checkpoint` therefore reads every checkpoint with ``weights_only=True``,
allowing only tensors, plain Python containers and the OmegaConf containers that
Lightning / solo-learn write when a config is saved as hyper-parameters. Anything else
is refused with a :class:`CheckpointError` naming the offending type, unless the caller
passes ``trust_checkpoint=True`` (then the file is loaded in full, with a warning).

Truncated or corrupt files are refused before anything is returned, so a caller never
sees half a checkpoint.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import re
import typing
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or carries types outside the safe list."""


class UnsafeCheckpointWarning(UserWarning):
    """Emitted when a checkpoint is loaded with the full (code-executing) unpickler."""


#: the advice of every error about a damaged checkpoint file
EARLIER = "resume from an earlier checkpoint"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_ONLY = re.compile(r"WeightsUnpickler error: (.*)")


def safe_globals() -> list[Any]:
    """Types allowed beyond torch's defaults: builtins, ``typing.Any``, pathlib paths and OmegaConf
    containers.

    OmegaConf's types are added when it is installed (hydra and solo-learn bring it).
    """
    # pathlib paths: Lightning < 2.2 stores ModelCheckpoint's dirpath as given (often a Path);
    # rebuilding a path from its parts runs no code of the file's choosing
    builtin_types = (dict, list, int, float, str, bool, tuple, set)
    paths = (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath)
    containers = (collections.OrderedDict, collections.defaultdict)
    allowed: list[Any] = [*builtin_types, *containers, typing.Any, *paths]
    try:
        from omegaconf import DictConfig, ListConfig, base, nodes
    except ImportError:  # pragma: no cover - omegaconf ships with hydra and solo-learn
        return allowed
    node_types = ("AnyNode", "BooleanNode", "BytesNode", "FloatNode", "IntegerNode", "StringNode")
    return [*allowed, DictConfig, ListConfig, base.ContainerMetadata, base.Metadata] + [
        getattr(nodes, name) for name in node_types
    ]


def _check_archive(path: Path) -> None:
    """Refuse empty, truncated or CRC-corrupt zip checkpoints before unpickling anything."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write was interrupted; {EARLIER}")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            magic = f.read(2)
        if magic[:1] == b"\x80":  # legacy (pre-1.6) torch.save format: no archive to check
            return
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or not a torch checkpoint "
            f"(no zip directory found); {EARLIER}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt ({err}); {EARLIER}") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: member {bad!r} fails its CRC check; {EARLIER}")


def load_checkpoint(path: str | Path, trust_checkpoint: bool = False, map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict with torch's safe unpickler.

    Args:
        path: the ``.ckpt`` / ``.pt`` file.
        trust_checkpoint: load types outside :func:`safe_globals` too (runs the full
            unpickler, which can execute code from the file: only for files you made).
        map_location: passed to :func:`torch.load`.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, not a dict, or
            (without ``trust_checkpoint``) carries a type outside the safe list.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} is not a file")
    _check_archive(path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unsafe_reason(str(err))
        if reason is None:
            raise _unreadable(path, err) from err
        if not trust_checkpoint:
            raise CheckpointError(
                f"checkpoint {path} contains {reason}, outside the types a checkpoint needs (tensors, "
                f"numbers, strings, lists, dicts, OmegaConf configs). Loading it could run code from the "
                f"file. Only if you made this file yourself, set trust_checkpoint=true"
            ) from err
        warnings.warn(
            f"trust_checkpoint=true: loading {path} with the full unpickler although it contains "
            f"{reason}; this can run code from the file",
            UnsafeCheckpointWarning,
            stacklevel=2,
        )
        ckpt = _load_trusted(path, map_location)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of states")
    return ckpt


def _load_trusted(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(err)})") from err


def _unsafe_reason(message: str) -> str | None:
    """What the safe unpickler refused, or None when the failure is not about types (e.g. truncation)."""
    if "truncated" in message or "Weights only load failed" not in message:
        return None
    found = _GLOBAL.search(message)
    if found:
        return f"the pickled global {found.group(1)}"
    detail = _WEIGHTS_ONLY.search(message)
    what = detail.group(1).strip()[:160] if detail else "unknown"
    return f"a pickled construct the safe loader refuses ({what})"


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    """The error for a file torch cannot read (it may be truncated or corrupt)."""
    problem = f"cannot be read ({_first_line(err)}); it may be truncated or corrupt"
    return CheckpointError(f"checkpoint {path} {problem}: {EARLIER}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
