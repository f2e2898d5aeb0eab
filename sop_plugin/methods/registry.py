"""The method registry: name -> method class, filled by the implementations themselves.

timm's style: this module imports no implementation; each one registers itself with
:func:`register_method`, and a second class under a taken name is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)

_METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: register a method implementation under ``name`` (unique)."""

    def add(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__qualname__})")
        _METHODS[name] = cls
        return cls

    return add


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {method_names()}")
    return _METHODS[name]
