"""Small pieces shared by the evaluations: settings from config mappings, progress bars, seed streams."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from tqdm.auto import tqdm

from sop_plugin.core import mix_seed

T = TypeVar("T")

#: one seed stream per evaluation: ``mix_seed(seed, STREAM[name], ...)``
STREAM = {
    "fewshot": 1401,
    "finetune": 1402,
    "canvas_train": 1403,
    "canvas_test": 1404,
    "seg_probe": 1405,
    "embedding_map": 1406,
}


def stream_seed(seed: int, name: str, *parts: int) -> int:
    """The seed of evaluation ``name`` (independent of the training streams and of each other)."""
    return mix_seed(int(seed), STREAM[name], *parts)


def settings_from(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """Build the settings dataclass ``cls`` from a config mapping; unknown keys name ``section``.

    Values are cast to the type of the field's default (int, float, str, bool, tuple), so
    ``eval.finetune.lr=1e-3`` given on a command line as a string or an int still works.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{section}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default
        if default is dataclasses.MISSING and fields[name].default_factory is not dataclasses.MISSING:
            default = fields[name].default_factory()
        kwargs[name] = _cast(default, value, f"{section}.{name}")
    return cls(**kwargs)


def _cast(default: Any, value: Any, key: str) -> Any:
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if isinstance(default, (int, float, str)):
            return type(default)(value)
        if isinstance(default, tuple):
            return tuple(value)
        if isinstance(default, dict):
            return dict(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}={value!r}: expected {type(default).__name__}") from err
    return value


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on an interactive stderr (none in logs and tests), like the feature extraction's."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not sys.stderr.isatty())
